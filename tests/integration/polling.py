"""Waiting for a stack to answer 200 again, timed: after a fault, or after held slots close."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def until_ok(send: Callable[[], httpx.Response], limit_s: float, every_s: float = 1.0) -> float:
    """Seconds until ``send()`` returns a 200; fails with the last answer after ``limit_s``."""
    t0 = time.monotonic()
    last = "no answer"
    while True:
        try:
            resp = send()
            if resp.status_code == 200:
                return time.monotonic() - t0
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        assert time.monotonic() - t0 < limit_s, f"no 200 within {limit_s} s; last: {last}"
        time.sleep(every_s)
