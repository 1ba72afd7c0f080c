"""The loop guard stops back-to-back cycles of several lengths soon after they begin, and
leaves near-cycles and ordinary repetition alone."""

from __future__ import annotations

import random

import pytest

from serving.generate.reasoning.loop_guard import LoopGuard


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


def reference_detection(tokens, *, max_period, repeats, min_repeated):
    """Brute force: after each token, the run of every period, recomputed from scratch."""
    for i in range(len(tokens)):
        for period in range(1, max_period + 1):
            run = 0
            while i - run - period >= 0 and tokens[i - run] == tokens[i - run - period]:
                run += 1
            if run >= max((repeats - 1) * period, min_repeated):
                return i, period
    return None


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_random_loopy_streams(seed):
    rng = random.Random(seed)
    tokens: list[int] = []
    while len(tokens) < 400:  # random text with short stutters and the odd real cycle
        if rng.random() < 0.3:
            span = [rng.randrange(6) for _ in range(rng.randrange(1, 9))]
            tokens += span * rng.randrange(1, 5)
        else:
            tokens.append(rng.randrange(6))
    settings = {"max_period": 12, "repeats": 3, "min_repeated": 10}
    guard = LoopGuard(max_period=12, repeats=3, min_repeated_tokens=10)
    found = guard.feed_many(tokens)
    expected = reference_detection(tokens, **settings)
    if expected is None:
        assert found is None
    else:
        # the earliest detection; at one index the shortest firing period is reported
        assert found is not None and found.at_token == expected[0]


def test_the_longest_period_is_covered():
    span = prose(256, seed=11)
    found = LoopGuard(max_period=256).feed_many(span * 3)
    assert found is not None and found.period == 256 and found.at_token == 3 * 256 - 1
    assert LoopGuard(max_period=255).feed_many(span * 4) is None


def test_filler_spans_need_a_longer_run():
    dash, newline, word = 7, 8, 9
    guard = LoopGuard(min_repeated_tokens=64, min_filler_repeated_tokens=256,
                      filler_ids={dash, newline})
    assert guard.feed_many(prose(20) + [dash] * 200 + [newline] + prose(20, seed=2)) is None
    found = guard.feed_many([newline] * 300)
    assert found is not None and found.period == 1 and found.repeated_tokens == 256
    # a loop of real words is caught at the ordinary threshold
    words = LoopGuard(filler_ids={dash, newline}).feed_many(prose(20) + [word] * 100)
    assert words is not None and words.repeated_tokens == 64


def test_memory_is_bounded_by_the_window():
    guard = LoopGuard(max_period=32)
    guard.feed_many(prose(5000))
    assert len(guard._window) == 32
    assert sum(len(p) for p in guard._positions.values()) == 32
    assert guard.tokens_seen == 5000
