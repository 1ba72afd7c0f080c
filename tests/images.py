"""Test images generated locally (photo-like JPEGs, edge cases)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses like a photo, not like a flat test card."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(height // 64, 2), max(width // 64, 2), 3),
                         dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255)
                           .astype(np.uint8))


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_url(width: int = 64, height: int = 48, color=(200, 40, 40)) -> str:
    return data_url(encode(Image.new("RGB", (width, height), color)))
