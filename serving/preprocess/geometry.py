"""The model's image grid: qwen-vl-utils' ``smart_resize`` rules, re-implemented exactly.

Qwen2-VL cuts an image into 14x14 patches and merges 2x2 of them into one visual token, so each
side must be a multiple of 28 (``IMAGE_FACTOR``); the pixel count is kept within
[min_pixels, max_pixels] while the aspect ratio is preserved as closely as the grid allows.
"""

from __future__ import annotations

import math

from serving.errors import ImageError

IMAGE_FACTOR = 28
MAX_RATIO = 200


def _round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def _ceil_by(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def _floor_by(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def smart_resize(height: int, width: int, *, min_pixels: int, max_pixels: int,
                 factor: int = IMAGE_FACTOR) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, pixels within bounds, ratio kept."""
    if height <= 0 or width <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ImageError(f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 "
                         f"is too extreme; at most {MAX_RATIO}:1 is supported")
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, _floor_by(height / beta, factor))
        w_bar = max(factor, _floor_by(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by(height * beta, factor)
        w_bar = _ceil_by(width * beta, factor)
    return h_bar, w_bar


def budgeted_resize(height: int, width: int, *, min_pixels: int, max_pixels: int,
                    engine_min_pixels: int, engine_max_pixels: int) -> tuple[int, int]:
    """Target (height, width) for one image's own pixel budget, as the engine will keep it.

    vLLM's Qwen2-VL processor runs ``smart_resize`` again with the deployment's bounds (engine
    args' ``mm_processor_kwargs``); a size on the grid whose pixel count lies within them comes
    back unchanged. A per-image budget lies within the deployment's bounds, but flooring to the
    grid can land under its min (a budget narrower than one row of tokens, e.g. low detail at
    exactly min_pixels), and the engine would then scale the image up behind the prompt's
    token count. Applying the engine's step here makes the prepared size the engine's size.
    """
    h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    return smart_resize(h, w, min_pixels=engine_min_pixels, max_pixels=engine_max_pixels)


def visual_tokens(height: int, width: int, factor: int = IMAGE_FACTOR) -> int:
    """Visual tokens of an image already on the grid (one per factor x factor block)."""
    return (height // factor) * (width // factor)
