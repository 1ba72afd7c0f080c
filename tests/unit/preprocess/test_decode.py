import io
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from serving.errors import ImageError
from serving.preprocess.decode import decode_image
from serving.preprocess.geometry import budgeted_resize, smart_resize
from tests.images import encode, photo

LIMITS = dict(min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28, max_source_pixels=50_000_000,
              allowed_formats=["JPEG", "PNG", "WEBP", "GIF", "BMP"])


CASES = [(size, fmt) for size in [(4000, 3000), (2048, 1536), (640, 480), (100, 30), (28, 28)]
         for fmt in ["JPEG", "PNG", "WEBP", "BMP", "GIF"] if fmt == "JPEG" or size[0] <= 2048]


@pytest.mark.parametrize("size,fmt", CASES)
def test_output_dims_equal_smart_resize(size, fmt):
    w, h = size
    out = decode_image(encode(photo(w, h).convert("RGB"), fmt), **LIMITS)
    assert (out.height, out.width) == smart_resize(h, w, min_pixels=LIMITS["min_pixels"],
                                                   max_pixels=LIMITS["max_pixels"])
    assert out.pixels.dtype == np.uint8 and out.pixels.shape[2] == 3
    assert out.source_format == fmt and (out.source_width, out.source_height) == (w, h)


def test_per_image_budget_decodes_to_the_size_the_engine_keeps():
    budget = dict(LIMITS, min_pixels=256 * 28 * 28, max_pixels=256 * 28 * 28)
    engine = (LIMITS["min_pixels"], LIMITS["max_pixels"])
    out = decode_image(encode(photo(1000, 700), "JPEG"), **budget, engine_bounds=engine)
    assert (out.height, out.width) == budgeted_resize(
        700, 1000, min_pixels=budget["min_pixels"], max_pixels=budget["max_pixels"],
        engine_min_pixels=engine[0], engine_max_pixels=engine[1]) == (392, 560)
    assert smart_resize(700, 1000, min_pixels=budget["min_pixels"],
                        max_pixels=budget["max_pixels"]) == (364, 532)  # under the min


def test_jpeg_draft_keeps_content():
    img = Image.new("RGB", (4000, 3000), (10, 200, 30))
    out = decode_image(encode(img, "JPEG", quality=95), **LIMITS)
    assert np.abs(out.pixels.astype(int) - [10, 200, 30]).max() < 8


def test_exif_orientation_applied_and_swaps_target():
    img = Image.new("RGB", (600, 300), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 300, 300))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    out = decode_image(encode(img, "JPEG", exif=exif), **LIMITS)
    assert (out.source_width, out.source_height) == (300, 600)
    assert out.height > out.width
    top = out.pixels[: out.height // 4].reshape(-1, 3).mean(axis=0)
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16", "1"])
def test_modes_become_rgb(mode):
    base = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent
    if mode in ("RGBA", "LA"):
        img = base.convert(mode)
        data = encode(img, "PNG")
    elif mode == "P":
        img = Image.new("P", (64, 64), 0)
        img.putpalette([0, 0, 0] * 256)
        img.info["transparency"] = 0
        data = encode(img, "PNG", transparency=0)
    elif mode == "CMYK":
        data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")
    elif mode == "I;16":
        data = encode(Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16)), "PNG")
    else:
        data = encode(Image.new(mode, (64, 64), 1 if mode == "1" else 255), "PNG")
    out = decode_image(data, **LIMITS)
    assert out.pixels.shape[2] == 3
    if mode in ("RGBA", "LA", "P"):  # transparent composites on white
        assert out.pixels.min() > 250
    if mode == "CMYK":
        assert out.pixels[..., 0].mean() > 200 and out.pixels[..., 1].mean() < 60
    if mode == "I;16":
        assert out.pixels.min() > 250


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), **LIMITS)
    assert out.pixels[..., 0].mean() > 200 and out.pixels[..., 1].mean() < 60


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"hello, not an image at all", "not a decodable image"),
    (b"II*\x00" + b"\x00" * 64, "TIFF is not supported"),
    (b"%PDF-1.4 ...", "PDF is not supported"),
])
def test_bad_bytes(data, match):
    with pytest.raises(ImageError, match=match):
        decode_image(data, **LIMITS)


def test_truncated_image():
    data = encode(photo(640, 480), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt|not a decodable"):
        decode_image(data[: len(data) // 3], **LIMITS)
    png = encode(photo(640, 480), "PNG")
    with pytest.raises(ImageError, match="truncated or corrupt|not a decodable"):
        decode_image(png[: len(png) // 2], **LIMITS)


def test_animated_gif_truncated_in_a_later_frame_is_a_400():
    # Found by test_fuzz_decode.py: Pillow's is_animated reads ahead to the second frame and
    # raised IndexError / struct.error on a cut there, which became a 500.
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    second = data.index(b"!\xf9", 20)  # the second frame's graphic control extension
    for cut in (second + 1, second + 3, second + 9, second + 17):
        with pytest.raises(ImageError, match="GIF image data is truncated or corrupt"):
            decode_image(data[:cut], **LIMITS)


def test_corrupt_exif_decodes_oriented_without_warning():
    # Found by test_fuzz_decode.py: Pillow reads a JPEG's EXIF when opening it (for the DPI)
    # and again in exif_transpose, and warned "Corrupt EXIF data" past our filters.
    # IFD0 claims two entries: Orientation=6 (rotate 90°), then one cut short after 4 bytes.
    tiff = (b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
            + b"\x0f\x01\x02\x00")
    payload = b"Exif\x00\x00" + tiff
    jpeg = encode(Image.new("RGB", (40, 20), (9, 9, 9)), "JPEG")
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode_image(data, **LIMITS)
    assert (out.source_width, out.source_height) == (20, 40) and out.height > out.width


def test_format_outside_allowlist_named():
    data = encode(Image.new("RGB", (32, 32)), "BMP")
    with pytest.raises(ImageError, match="BMP|not a decodable"):
        decode_image(data, **{**LIMITS, "allowed_formats": ["JPEG", "PNG"]})


def test_decompression_bomb_rejected_before_decode():
    bomb = encode(Image.new("L", (12000, 12000), 0), "PNG")  # ~150 KB, 144 Mpx
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError, match="over the 50,000,000-pixel limit"):
        decode_image(bomb, **LIMITS)


def test_extreme_aspect_ratio():
    with pytest.raises(ImageError, match="aspect ratio"):
        decode_image(encode(Image.new("RGB", (4020, 20)), "PNG"), **LIMITS)
