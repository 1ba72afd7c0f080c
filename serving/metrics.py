"""Prometheus metrics of our own (Ray's metrics agent exports them beside Serve's).

Created per replica in ``__init__`` (no module-level state); Ray prefixes every name with
``ray_`` on export, e.g. ``ray_qvq_loop_guard_detections_total``.
"""

from __future__ import annotations

from ray.util import metrics

from serving.reasoning.session import ReasoningOutcome

_FRACTION_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
_TOKEN_BUCKETS = [64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


class ReasoningMetrics:
    """Per-answer reasoning signals: loops, budgets, final answers, reasoning tokens, language."""

    def __init__(self, model: str):
        self._tags = {"model": model}
        keys = ("model",)
        self.loops = metrics.Counter(
            "qvq_loop_guard_detections", description="Answers in which the loop guard found "
            "back-to-back repetition, by action (detected: kept going; stopped).",
            tag_keys=(*keys, "action"))
        self.budget_exhausted = metrics.Counter(
            "qvq_thinking_budget_exhausted", description="Answers whose reasoning hit "
            "max_reasoning_tokens and were asked to conclude.", tag_keys=keys)
        self.final_answers = metrics.Counter(
            "qvq_final_answers", description="Finished answers, by whether they held a "
            "final-answer marker.", tag_keys=(*keys, "found"))
        self.reasoning_tokens = metrics.Histogram(
            "qvq_reasoning_tokens", description="Reasoning tokens per answer (before the "
            "final-answer marker).", boundaries=_TOKEN_BUCKETS, tag_keys=keys)
        self.language_mixed = metrics.Counter(
            "qvq_language_mixed_answers", description="Answers that mix scripts (CJK in a "
            "Latin-script answer or the reverse), by dominant script.",
            tag_keys=(*keys, "dominant"))
        self.language_minority = metrics.Histogram(
            "qvq_language_minority_fraction", description="Share of words in the answer's "
            "minority script (0: one script only).", boundaries=_FRACTION_BUCKETS,
            tag_keys=keys)

    def record(self, outcome: ReasoningOutcome) -> None:
        tags = self._tags
        if outcome.loop is not None:
            self.loops.inc(1, tags={**tags, "action": outcome.loop_action or "detected"})
        if outcome.thinking_budget_exhausted:
            self.budget_exhausted.inc(1, tags=tags)
        self.final_answers.inc(1, tags={**tags, "found": str(outcome.final_answer_found).lower()})
        self.reasoning_tokens.observe(outcome.reasoning_tokens, tags=tags)
        language = outcome.language
        if language is not None and language.dominant != "none":
            self.language_minority.observe(language.minority_fraction, tags=tags)
            if language.mixed:
                self.language_mixed.inc(1, tags={**tags, "dominant": language.dominant})
