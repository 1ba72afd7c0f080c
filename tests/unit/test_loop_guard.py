"""The loop guard stops back-to-back cycles of several lengths soon after they begin, and
leaves near-cycles and ordinary repetition alone."""

from __future__ import annotations

import random

import pytest

from serving.reasoning.loop_guard import LoopGuard


def prose(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5000) for _ in range(n)]


@pytest.mark.parametrize("period", [1, 2, 7, 40, 100, 250])
def test_cycles_of_several_lengths_are_caught(period):
    guard = LoopGuard(max_period=256, repeats=3, min_repeated_tokens=64)
    head = prose(300, seed=period)
    span = prose(period, seed=1000 + period)
    assert guard.feed_many(head) is None
    found = guard.feed_many(span * (300 // period + 5))
    assert found is not None and found.period % period == 0
    # detected once the span has come back: (repeats - 1) periods, or 64 tokens for short spans
    delay = found.at_token - len(head) + 1
    assert delay <= max(3 * period, 64 + period)
    assert found.cycle_started_at <= len(head) + period


def test_near_cycles_do_not_stop():
    guard = LoopGuard(max_period=256, repeats=3, min_repeated_tokens=64)
    span = prose(50, seed=3)
    text = []
    for i in range(20):  # the same paragraph, one token changed each time
        copy = list(span)
        copy[i % 50] = 9000 + i
        text += copy
    assert guard.feed_many(text) is None


def test_two_repeats_are_allowed_three_are_not():
    span = prose(80, seed=5)
    assert LoopGuard(repeats=3).feed_many(prose(10) + span * 2 + prose(50, seed=9)) is None
    assert LoopGuard(repeats=3).feed_many(prose(10) + span * 3) is not None


def test_reports_once_and_rejects_bad_settings():
    guard = LoopGuard(min_repeated_tokens=8, repeats=2, max_period=4)
    found = guard.feed_many([1] * 20)
    assert found is not None and guard.feed(1) is None and guard.detection == found
    with pytest.raises(ValueError):
        LoopGuard(repeats=1)
