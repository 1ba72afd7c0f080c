"""Prometheus metrics of our own, one class per role (Ray's metrics agent exports them beside
Serve's and vLLM's).

Each replica creates its role's metrics in ``__init__`` (no module-level state). Ray prefixes
every name with ``ray_`` on export and counters get ``_total``: ``qvq_api_requests`` is scraped as
``ray_qvq_api_requests_total``. The Grafana dashboard in ``helm/qvq-serving/dashboards`` plots
them. Tag values are bounded: routes are our route templates, keys are configured API key ids
(or ``anonymous``), stages and results are fixed words.

Counters whose tag values are known in advance are exported at 0 from replica start (the
Prometheus convention): dashboards and alerts see a zero rate, not "no data", until the first
event, and a test can find every series without waiting for a rare event to happen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ray.util import metrics

from serving.generate.reasoning.session import ReasoningOutcome
from serving.roles import ROUTER

_SECONDS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
_FRACTION_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
_TOKEN_BUCKETS = [64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
_BYTES = [2**k for k in range(10, 28, 2)]  # 1 KiB .. 128 MiB
_PIXELS = [10**k for k in range(4, 9)] + [25_000_000, 64_000_000]
TOKEN_KINDS = ("prompt", "completion", "reasoning")


def add(counter: metrics.Counter, amount: float,
        tags: Mapping[str, str] | None = None) -> None:
    """``counter.inc(amount)`` for an amount that may be 0: Ray's counters refuse 0 (a
    ValueError, which turned an answer without reasoning tokens into a 500)."""
    if amount > 0:
        counter.inc(amount, tags=dict(tags) if tags is not None else None)


def start_at_zero(counter: metrics.Counter, tag_sets: Iterable[Mapping[str, str]] = ({},)) -> None:
    """Export each of these series at 0 now. Ray's public ``Counter.inc`` refuses 0, so this
    records through the metric's own ``_record``, which ``inc`` calls after its check."""
    for tags in tag_sets:
        counter._record(0, tags=dict(tags))


class ApiMetrics:
    """API traffic per route and key, limits and backpressure, token usage per key.

    ``callers``: the known caller ids, each with the limits that apply to it
    (:func:`serving.api.limits.limit_kinds`); their token and refusal counters start at 0.
    ``chat_entry``: the deployment serving chat completions (serving.roles.chat_entry).
    """

    def __init__(self, callers: Mapping[str, Sequence[str]] | None = None,
                 chat_entry: str = ROUTER) -> None:
        callers = callers or {}
        self.chat_entry = chat_entry  # the deployment whose admission refusals are counted
        self.requests = metrics.Counter(
            "qvq_api_requests", description="API responses by route, HTTP status, error code "
            "(empty for a success) and key.", tag_keys=("route", "status", "code", "key"))
        self.latency = metrics.Histogram(
            "qvq_api_request_seconds", description="Time from request to the last byte.",
            boundaries=_SECONDS, tag_keys=("route",))
        self.stream_ttft = metrics.Histogram(
            "qvq_stream_time_to_first_token_seconds", description="Streams: time from request "
            "to the first generated text, images and queues included.", boundaries=_SECONDS)
        self.rate_limited = metrics.Counter(
            "qvq_rate_limited", description="Requests refused with 429, by key and the limit "
            "they hit.", tag_keys=("key", "limit"))
        self.admission_rejected = metrics.Counter(
            "qvq_admission_rejected", description="Chat requests refused with 503 by a "
            "chat-entry replica at capacity (server.max_in_flight_requests), by the "
            "deployment that refused them.", tag_keys=("deployment",))
        self.tokens = metrics.Counter(
            "qvq_tokens", description="Tokens per key by kind (prompt, completion, reasoning).",
            tag_keys=("key", "kind"))
        self.images = metrics.Counter(
            "qvq_request_images", description="Images sent in chat requests, per key.",
            tag_keys=("key",))
        start_at_zero(self.admission_rejected, [{"deployment": chat_entry}])
        start_at_zero(self.rate_limited, [{"key": key, "limit": limit}
                                          for key, limits in callers.items() for limit in limits])
        start_at_zero(self.tokens, [{"key": key, "kind": kind}
                                    for key in callers for kind in TOKEN_KINDS])
        start_at_zero(self.images, [{"key": key} for key in callers])


class PreprocessorMetrics:
    """Per-stage image latency, sizes, cache tiers."""

    def __init__(self) -> None:
        self.cache_lookups = metrics.Counter(
            "qvq_image_cache_lookups", description="Preprocessed-image cache lookups by result.",
            tag_keys=("result",))
        self.stage_seconds = metrics.Histogram(
            "qvq_image_stage_seconds", description="Time per image in each preprocessing stage "
            "(fetch, decode, resize, store).", boundaries=_SECONDS, tag_keys=("stage",))
        self.store_failures = metrics.Counter(
            "qvq_image_store_failures", description="Request images that could not be stored.")
        self.image_bytes = metrics.Histogram(
            "qvq_image_bytes", description="Encoded size of each image received.",
            boundaries=_BYTES)
        self.source_pixels = metrics.Histogram(
            "qvq_image_source_pixels", description="Pixels of each decoded source image.",
            boundaries=_PIXELS)
        start_at_zero(self.cache_lookups,
                      [{"result": result} for result in ("memory", "store", "miss")])
        start_at_zero(self.store_failures)


class GeneratorMetrics:
    """Engine-side latency and the per-answer reasoning signals."""

    def __init__(self, model: str):
        self._tags = {"model": model}
        keys = ("model",)
        self.ttft = metrics.Histogram(
            "qvq_time_to_first_token_seconds", description="Generator: time from the request's "
            "arrival at the replica to its first token (engine queue and prefill).",
            boundaries=_SECONDS, tag_keys=keys)
        self.engine_queue = metrics.Histogram(
            "qvq_engine_queue_seconds", description="Time a request waited in vLLM's scheduler "
            "queue before its first step.", boundaries=_SECONDS, tag_keys=keys)
        self.generation = metrics.Histogram(
            "qvq_generation_seconds", description="Time from the first to the last token.",
            boundaries=_SECONDS, tag_keys=keys)
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
        start_at_zero(self.loops, [{**self._tags, "action": action}
                                   for action in ("detected", "stopped")])
        start_at_zero(self.budget_exhausted, [self._tags])
        start_at_zero(self.final_answers, [{**self._tags, "found": found}
                                           for found in ("true", "false")])
        start_at_zero(self.language_mixed, [{**self._tags, "dominant": script}
                                            for script in ("latin", "cjk")])

    def record_timing(self, ttft_s: float | None, generation_s: float | None,
                      queue_s: float | None) -> None:
        for histogram, value in ((self.ttft, ttft_s), (self.generation, generation_s),
                                 (self.engine_queue, queue_s)):
            if value is not None and value >= 0:
                histogram.observe(value, tags=self._tags)

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


class BatchMetrics:
    """Batch progress: lines finished, jobs and lines still to go."""

    def __init__(self) -> None:
        self.lines = metrics.Counter(
            "qvq_batch_lines", description="Batch lines finished, by status (completed, "
            "failed).", tag_keys=("status",))
        self.active = metrics.Gauge(
            "qvq_batches_active", description="Batches validating or in progress.")
        self.remaining = metrics.Gauge(
            "qvq_batch_lines_remaining", description="Lines of active batches not finished yet.")
        start_at_zero(self.lines, [{"status": status} for status in ("completed", "failed")])
        self.active.set(0)
        self.remaining.set(0)
