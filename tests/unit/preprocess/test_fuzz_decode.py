"""Property tests (hypothesis) of the image decoder on hostile bytes.

Inputs: random bytes, random bytes behind real magic numbers, and small real images (every
allowed format, several modes, EXIF orientation, animation) with bytes flipped, truncated,
spliced or their header dimensions set huge. Whatever arrives, ``decode_image`` returns pixels
on exactly ``smart_resize``'s grid or raises ImageError with a short message; never another
exception, never a warning, within the profile's deadline per call.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from serving.config import ImageConfig
from serving.errors import ImageError
from serving.preprocess.decode import decode_image
from serving.preprocess.geometry import IMAGE_FACTOR, MAX_RATIO, smart_resize

pytestmark = pytest.mark.timeout(60 + settings().max_examples // 10)  # scales with the profile

DEFAULTS = ImageConfig()
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# --------------------------------------------------------------------------- limits

def usually(default, *others: st.SearchStrategy) -> st.SearchStrategy:
    """The default most of the time, so the other limits are seldom what rejects an input."""
    return st.one_of(st.just(default), st.just(default), st.just(default), *others)


LIMITS = st.fixed_dictionaries({
    "min_pixels": usually(DEFAULTS.min_pixels, st.sampled_from([28 * 28, 4 * 28 * 28])),
    "max_pixels": usually(DEFAULTS.max_pixels, st.sampled_from([28 * 28, 64 * 28 * 28])),
    # Decoding costs time and memory in proportion to the pixels a header declares, up to this
    # limit (64 Mpx by default: ~0.4 s for a forged 60 Mpx header on a truncated file). 4 Mpx
    # keeps every call far inside the deadline on a loaded CI box; larger headers are refused
    # before decoding, exactly as above the default.
    "max_source_pixels": usually(4_000_000, st.sampled_from([4096, 1])),
    "allowed_formats": usually(list(FORMATS), st.lists(
        st.sampled_from(FORMATS), min_size=1, max_size=5, unique=True)),
    "jpeg_draft_coverage": usually(DEFAULTS.jpeg_draft_coverage, st.floats(0.5, 1.0)),
    "sha256": st.none() | st.just("f" * 64),
}).map(lambda lim: {**lim, "min_pixels": min(lim["min_pixels"], lim["max_pixels"])})

# --------------------------------------------------------------------------- inputs

MAGIC = st.sampled_from([
    b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01", b"\xff\xd8\xff\xdb",
    b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF89a", b"GIF87a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\xff\xff\xff\x7fWEBPVP8L",
    b"RIFF\x10\x00\x00\x00WEBPVP8X", b"BM", b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00",
    b"II*\x00", b"%PDF-1.4", b"\x00\x00\x00\x0cjP  ", b"<svg", b"\x00\x00\x00\x18ftypheic",
])
MODES = {"JPEG": ["RGB", "L", "CMYK"], "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
         "WEBP": ["RGB", "RGBA"], "GIF": ["P", "L"], "BMP": ["RGB", "L", "P", "1"]}


@functools.lru_cache(maxsize=512)
def real_image(fmt: str, mode: str, width: int, height: int, seed: int, orientation: int,
               frames: int) -> bytes:
    """Small encoded image of random pixels (cached: hypothesis revisits the same ones)."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    base = Image.fromarray(rgba, mode="RGBA")
    img = base.convert(mode) if mode not in ("P", "I;16") else (
        base.convert("RGB").quantize(16) if mode == "P"
        else Image.fromarray(rng.integers(0, 65535, size=(height, width), dtype=np.uint16)))
    buf = io.BytesIO()
    kwargs: dict = {}
    if fmt == "JPEG" and orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    if fmt in ("GIF", "WEBP") and frames > 1:
        kwargs.update(save_all=True, append_images=[img.rotate(90 * i) for i in range(1, frames)])
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


IMAGES = st.builds(
    lambda fmt, pick, w, h, seed, orientation, frames: (
        fmt, real_image(fmt, MODES[fmt][pick % len(MODES[fmt])], w, h, seed, orientation, frames)),
    st.sampled_from(FORMATS), st.integers(0, 6), st.integers(1, 48), st.integers(1, 48),
    st.integers(0, 3), st.sampled_from([0, 0, 1, 3, 6, 8, 9, 255]), st.sampled_from([1, 1, 2]))


def _set_dims(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """Header dimensions overwritten in place (checksums left stale, as an attacker would)."""
    buf = bytearray(data)
    try:
        if fmt == "PNG":
            buf[16:24] = struct.pack(">II", width, height)
        elif fmt == "GIF":
            buf[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
            at = buf.find(b"\x2c", 13)  # first image descriptor
            if at > 0:
                buf[at + 5:at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        elif fmt == "BMP":
            buf[18:26] = struct.pack("<ii", width & 0x7FFFFFFF, -(height & 0x7FFFFFFF))
        elif fmt == "JPEG":
            for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
                at = buf.find(marker)
                if at > 0:
                    buf[at + 5:at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
                    break
        elif fmt == "WEBP":
            at = buf.find(b"VP8X")
            if at > 0:
                buf[at + 12:at + 18] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + (
                    (height - 1) & 0xFFFFFF).to_bytes(3, "little")
            elif (at := buf.find(b"VP8L")) > 0:
                bits = ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
                buf[at + 9:at + 13] = bits.to_bytes(4, "little")
            elif (at := buf.find(b"VP8 ")) > 0:
                buf[at + 14:at + 18] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    except struct.error:
        return data
    return bytes(buf)


@st.composite
def mutated_images(draw) -> tuple[str, bytes, bool]:
    """(format, bytes, untouched) of a real image after zero to three mutations."""
    fmt, data = draw(IMAGES)
    untouched = True
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["flip", "flip", "truncate", "splice", "cut", "dims",
                                     "dims"]))
        untouched = False
        # past the first bytes mostly: a broken signature only exercises identification
        at = draw(st.integers(0, max(len(data) - 1, 0)) | st.integers(
            min(len(data) // 3, max(len(data) - 1, 0)), max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "splice":
            data = data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
        elif kind == "cut":
            data = data[:at] + data[at + draw(st.integers(1, 64)):]
        else:
            side = st.sampled_from([0, 1, 2**14 - 1, 65535, 100_000, 2**24 - 1, 2**31 - 1])
            data = _set_dims(data, fmt, draw(side | st.integers(0, 70_000) | st.integers(1, 600)),
                             draw(side | st.integers(0, 70_000) | st.integers(1, 600)))
    return fmt, data, untouched


# --------------------------------------------------------------------------- the property


def check_decode(data: bytes, limits: dict):
    """Pixels on smart_resize's grid, or ImageError with a short actionable message."""
    try:
        out = decode_image(data, **limits)
    except ImageError as exc:
        assert exc.status_code == 400 and exc.error_type == "invalid_request_error"
        assert exc.message.strip() and len(exc.message) < 500
        assert "Traceback" not in exc.message and 'File "' not in exc.message
        return None
    h, w = out.pixels.shape[:2]
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (h, w, 3)
    assert out.pixels.flags["C_CONTIGUOUS"]
    assert (h, w) == smart_resize(out.source_height, out.source_width,
                                  min_pixels=limits["min_pixels"],
                                  max_pixels=limits["max_pixels"])
    assert h % IMAGE_FACTOR == 0 and w % IMAGE_FACTOR == 0
    # smart_resize (qwen-vl-utils' rules) keeps h * w <= max_pixels only when rounding allows:
    # a side clamped to one block, or a min_pixels close to max_pixels rounded up, goes over.
    assert out.source_width * out.source_height <= limits["max_source_pixels"]
    assert out.source_format in limits["allowed_formats"]
    assert out.sha256 == (limits["sha256"] or hashlib.sha256(data).hexdigest())
    return out


@given(st.binary(max_size=2000), LIMITS)
def test_random_bytes_decode_or_raise_image_error(data, limits):
    check_decode(data, limits)


@given(MAGIC, st.binary(max_size=600), LIMITS)
def test_magic_numbers_then_noise_decode_or_raise_image_error(magic, rest, limits):
    check_decode(magic + rest, limits)


@given(mutated_images(), LIMITS)
def test_mutated_images_decode_or_raise_image_error(image, limits):
    fmt, data, untouched = image
    out = check_decode(data, limits)
    if untouched and fmt in limits["allowed_formats"]:  # a real image within limits decodes
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
        fits = w * h <= limits["max_source_pixels"] and max(w, h) / min(w, h) <= MAX_RATIO
        assert (out is not None) == fits
