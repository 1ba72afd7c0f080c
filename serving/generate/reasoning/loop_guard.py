"""Detect generation that has started to cycle, while tokens stream.

A reasoning model that is stuck repeats itself back to back: the same span of P tokens, again
and again. For every period P up to ``max_period`` the guard tracks one run: how many
consecutive latest tokens equal the token P positions earlier. A span of P tokens repeated K
times back to back makes that run reach (K - 1) * P. The guard fires when, for some P, the run
reaches ``max((repeats - 1) * P, min_repeated_tokens)``: long spans must come back ``repeats``
times, and short ones (a word stuck on repeat) must fill ``min_repeated_tokens``. Spans made
only of *filler* tokens (whitespace, punctuation: rules, table borders, indentation) must fill
``min_filler_repeated_tokens`` instead, so a long separator line in ordinary prose is not a loop
while a model that emits newlines forever still is.

Cost: a new token can only extend the runs of the periods at which the same token occurred in
the last ``max_period`` tokens, so the guard visits exactly those (a per-token position index)
and leaves the others stale; a stale run is recognised by the index of its last extension.
Per token that is O(occurrences of the token in the window): a small constant for prose, and
independent of how long the answer already is. Memory: the window, its position index and two
integers per period.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoopDetection:
    period: int  # tokens in the repeating span
    repeated_tokens: int  # tokens that equal the token one period earlier, back to back
    at_token: int  # index of the token that triggered detection (0-based, in this stream)

    @property
    def cycle_started_at(self) -> int:
        """Index of the first token of the first copy of the span."""
        return self.at_token - self.repeated_tokens - self.period + 1

    def to_dict(self) -> dict[str, int]:
        return {"period": self.period, "repeated_tokens": self.repeated_tokens,
                "at_token": self.at_token, "cycle_started_at": self.cycle_started_at}


class LoopGuard:
    def __init__(self, *, max_period: int = 256, repeats: int = 3,
                 min_repeated_tokens: int = 64, min_filler_repeated_tokens: int = 256,
                 filler_ids: Iterable[int] = ()):
        if max_period < 1 or repeats < 2 or min_repeated_tokens < 1 \
                or min_filler_repeated_tokens < 1:
            raise ValueError("need max_period >= 1, repeats >= 2, min_repeated_tokens >= 1, "
                             "min_filler_repeated_tokens >= 1")
        self.max_period, self.repeats = max_period, repeats
        self.min_repeated_tokens = min_repeated_tokens
        self._filler = frozenset(filler_ids)
        periods = range(max_period + 1)
        self._need = [max((repeats - 1) * p, min_repeated_tokens) for p in periods]
        self._need_filler = [max((repeats - 1) * p, min_filler_repeated_tokens) for p in periods]
        self._window: deque[int] = deque()  # the last max_period tokens, oldest first
        self._positions: dict[int, deque[int]] = {}  # token -> its indices in the window
        self._run = [0] * (max_period + 1)  # run of period p, as of index _last[p]
        self._last = [-2] * (max_period + 1)
        self._filler_run_from = [-1] * (max_period + 1)  # run start known to be filler-only
        self._count = 0
        self.detection: LoopDetection | None = None

    @property
    def tokens_seen(self) -> int:
        return self._count

    def feed(self, token: int) -> LoopDetection | None:
        """Add one token; returns the detection the first time the output is cycling."""
        index = self._count
        self._count += 1
        window, positions = self._window, self._positions
        found = None
        earlier = positions.get(token)
        if earlier is not None:
            run, last = self._run, self._last
            for position in earlier:
                period = index - position
                length = run[period] + 1 if last[period] == index - 1 else 1
                run[period], last[period] = length, index
                if length >= self._need[period] and self.detection is None and found is None:
                    found = self._confirm(period, length, index)
            earlier.append(index)
        else:
            positions[token] = deque((index,))
        window.append(token)
        if len(window) > self.max_period:
            oldest = window.popleft()
            seen = positions[oldest]
            seen.popleft()
            if not seen:
                del positions[oldest]
        if found is not None:
            self.detection = found
        return found

    def _confirm(self, period: int, length: int, index: int) -> LoopDetection | None:
        if self._filler:
            run_start = index - length + 1
            if self._filler_run_from[period] != run_start:
                span = list(self._window)[-period:] if period <= len(self._window) else []
                if span and all(t in self._filler for t in span):
                    self._filler_run_from[period] = run_start
            if self._filler_run_from[period] == run_start \
                    and length < self._need_filler[period]:
                return None
        return LoopDetection(period, length, index)

    def feed_many(self, tokens: Iterable[int]) -> LoopDetection | None:
        for token in tokens:
            found = self.feed(token)
            if found:
                return found
        return None
