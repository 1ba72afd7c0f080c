"""Test images generated locally (photo-like JPEGs, edge cases)."""

from __future__ import annotations

import base64
import io

from PIL import Image

from loadtest.photos import photo

__all__ = ["photo", "encode", "data_url", "png_url"]


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_url(width: int = 64, height: int = 48, color=(200, 40, 40)) -> str:
    return data_url(encode(Image.new("RGB", (width, height), color)))
