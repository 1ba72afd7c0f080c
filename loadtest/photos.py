"""Photo-like test images generated locally (no downloads): smooth structure plus sensor noise,
so JPEG sizes and decode costs look like camera photos rather than flat test cards."""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(height // 64, 2), max(width // 64, 2), 3),
                         dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255)
                           .astype(np.uint8))


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90,
               cache_dir: pathlib.Path | None = None) -> bytes:
    """JPEG bytes of :func:`photo`, cached on disk when ``cache_dir`` is given."""
    if cache_dir is not None:
        path = cache_dir / f"photo-{width}x{height}-s{seed}-q{quality}.jpg"
        if path.exists():
            return path.read_bytes()
    buf = io.BytesIO()
    photo(width, height, seed).save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data
