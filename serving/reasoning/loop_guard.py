"""Detect generation that has started to cycle, while tokens stream.

A reasoning model that is stuck repeats itself back to back: the same span of P tokens, again
and again. For every period P up to ``max_period`` the guard keeps one counter: how many
consecutive latest tokens equal the token P positions earlier. A span of P tokens repeated K
times back to back makes that counter reach (K - 1) * P. The guard fires when, for some P,
the counter reaches ``max((repeats - 1) * P, min_repeated_tokens)``: long spans must come back
``repeats`` times, and short ones (a word stuck on repeat) must fill ``min_repeated_tokens``.

Cost per token is O(max_period), independent of how long the answer already is; memory is a
ring of ``max_period`` tokens plus one counter per period. Groundwork for issue 7; not wired
into the generator yet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LoopDetection:
    period: int  # tokens in the repeating span
    repeated_tokens: int  # tokens that equal the token one period earlier, back to back
    at_token: int  # index of the token that triggered detection

    @property
    def cycle_started_at(self) -> int:
        """Index of the first token of the first copy of the span."""
        return self.at_token - self.repeated_tokens - self.period + 1


class LoopGuard:
    def __init__(self, *, max_period: int = 256, repeats: int = 3,
                 min_repeated_tokens: int = 64):
        if max_period < 1 or repeats < 2 or min_repeated_tokens < 1:
            raise ValueError("need max_period >= 1, repeats >= 2, min_repeated_tokens >= 1")
        self.max_period, self.repeats = max_period, repeats
        self.min_repeated_tokens = min_repeated_tokens
        self._recent: deque[int] = deque(maxlen=max_period)  # newest last
        self._runs = [0] * (max_period + 1)  # _runs[p]: current run for period p
        self._count = 0
        self.detection: LoopDetection | None = None

    def feed(self, token: int) -> LoopDetection | None:
        """Add one token; returns the detection the first time the output is cycling."""
        recent, runs = self._recent, self._runs
        n = len(recent)
        for period in range(1, n + 1):
            if recent[n - period] == token:
                runs[period] += 1
            else:
                runs[period] = 0
        recent.append(token)
        index = self._count
        self._count += 1
        if self.detection is None:
            for period in range(1, n + 1):
                need = max((self.repeats - 1) * period, self.min_repeated_tokens)
                if runs[period] >= need:
                    self.detection = LoopDetection(period, runs[period], index)
                    return self.detection
        return None

    def feed_many(self, tokens) -> LoopDetection | None:
        for token in tokens:
            found = self.feed(token)
            if found:
                return found
        return None
