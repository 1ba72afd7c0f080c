"""Safe, exact decoding: encoded bytes -> RGB pixels on the model's grid.

Order matters for safety and speed: identify the format from the header with only the allowed
decoders, check the pixel count before decoding anything (decompression bombs), let JPEG decode
at a reduced scale when the grid target is much smaller, then orient (EXIF), flatten to RGB and
resize to exactly ``smart_resize``'s dimensions of the oriented source.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.errors import ImageError
from serving.images.geometry import smart_resize
from serving.protocol import PreparedImage

# Magic numbers of formats we refuse, so the error can name what was sent.
_KNOWN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"), (b"8BPS", "PSD"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"<svg", "SVG"), (b"<?xml", "XML/SVG"), (b"qoif", "QOI"),
)
_ORIENTATION_SWAPS_AXES = {5, 6, 7, 8}


def _sniff(data: bytes) -> str | None:
    head = data[:32]
    for sig, name in _KNOWN_SIGNATURES:
        if head.startswith(sig):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1")
        return "HEIC/AVIF" if brand[:3] in ("hei", "hev", "avi", "mif") else "MP4/ISO media"
    return None


def _open(data: bytes, allowed_formats: Sequence[str]) -> Image.Image:
    if not data:
        raise ImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=list(allowed_formats))
    except Image.DecompressionBombError:
        raise ImageError("image has too many pixels to decode safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        named = _sniff(data)
        allowed = ", ".join("WebP" if f == "WEBP" else f for f in allowed_formats)
        if named:
            raise ImageError(f"image format {named} is not supported; send one of: "
                             f"{allowed}") from None
        raise ImageError(f"bytes are not a decodable image; send one of: {allowed}") from None


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the image
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in _ORIENTATION_SWAPS_AXES else (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / (65535.0 if img.mode.startswith("I;16") or top > 255 else max(top, 1.0))
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, *, min_pixels: int, max_pixels: int, max_source_pixels: int,
                 allowed_formats: Sequence[str], sha256: str | None = None) -> PreparedImage:
    """Decode ``data`` and return it resized to the model's grid (HxWx3 uint8)."""
    img = _open(data, allowed_formats)
    fmt = img.format or "unknown"
    width, height = img.size
    if width * height > max_source_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height:,} pixels, over the "
                         f"{max_source_pixels:,}-pixel limit; downscale it before sending")
    src_w, src_h = _oriented_size(img)
    target_h, target_w = smart_resize(src_h, src_w, min_pixels=min_pixels, max_pixels=max_pixels)
    try:
        if fmt == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target: DCT scaling
            # is far cheaper than decoding every pixel and then throwing most away.
            swap = (src_w, src_h) != (width, height)
            need = (target_h, target_w) if swap else (target_w, target_h)
            img.draft("RGB", need)
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageError(f"{fmt} image data is truncated or corrupt") from None
    except Image.DecompressionBombError:
        raise ImageError("image has too many pixels to decode safely") from None
    if img.size != (target_w, target_h):
        img = img.resize((target_w, target_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    pixels = np.asarray(img, dtype=np.uint8)
    return PreparedImage(pixels=pixels, source_width=src_w, source_height=src_h,
                         source_format=fmt, sha256=sha256 or hashlib.sha256(data).hexdigest())
