"""Per-key rate limits, shared by every router replica.

:class:`LimitBook` is the arithmetic (no I/O, an injectable clock): per key, continuously
refilling buckets for requests, tokens and images per minute, plus leases for concurrent
requests. A request is admitted only when every limit has room, and then charged on all of
them at once; otherwise :class:`~serving.errors.RateLimitError` names the limit that is full and
when to retry. Token reservations are settled with the real usage when the request ends.

:class:`RateLimiter` is the one Serve replica that holds the book, so a key's limits hold across
any number of router replicas (one extra hop per chat request, only when limits are configured).
If it restarts, its counts start afresh; routers that cannot reach it in
``limits.limiter_timeout_s`` let requests through (availability over strictness).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ray import serve

from serving.api.auth import caller_id
from serving.config import KeyLimits, LimitsConfig, ServingConfig
from serving.errors import RateLimitError
from serving.roles import LIMITER

WINDOW_S = 60.0


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class Bucket:
    """``capacity`` units refilling at capacity per minute, continuously."""

    capacity: int
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / WINDOW_S
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * WINDOW_S / self.capacity

    def reset_s(self) -> float:
        return (self.capacity - self.level) * WINDOW_S / self.capacity


@dataclass
class KeyState:
    buckets: dict[str, Bucket] = field(default_factory=dict)
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry


@dataclass(frozen=True)
class RateLease:
    """A request charged to its caller's limits: its concurrency lease, its token reservation
    and the ``x-ratelimit-*`` headers; settled by :meth:`RateLimits.finish`."""

    caller: str
    lease: str | None
    reserved_tokens: int
    headers: dict[str, str]


_KINDS = (("requests", "requests_per_minute"), ("tokens", "tokens_per_minute"),
          ("images", "images_per_minute"))


def limit_kinds(limits: KeyLimits) -> list[str]:
    """The ``limit`` names a caller with these limits can be refused on (429s, metrics)."""
    kinds = [kind for kind, attr in _KINDS if getattr(limits, attr) is not None]
    if limits.concurrent_requests is not None:
        kinds.append("concurrency")
    if limits.max_active_batches is not None or limits.max_active_batch_bytes is not None:
        kinds.append("batches")
    return kinds


class LimitBook:
    def __init__(self, config: LimitsConfig, *, lease_ttl_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._ttl = lease_ttl_s
        self._clock = clock
        self._keys: dict[str, KeyState] = {}

    def _state(self, caller: str, limits: KeyLimits, now: float) -> KeyState:
        state = self._keys.setdefault(caller, KeyState())
        for kind, attr in _KINDS:
            capacity = getattr(limits, attr)
            bucket = state.buckets.get(kind)
            if capacity is None:
                state.buckets.pop(kind, None)
            elif bucket is None or bucket.capacity != capacity:  # new, or limit changed
                state.buckets[kind] = Bucket(capacity, float(capacity), now)
            else:
                bucket.refill(now)
        state.leases = {k: t for k, t in state.leases.items() if t > now}
        return state

    def admit(self, key_id: str | None, *, tokens: int, images: int) -> RateLease:
        """Charge one request, or raise RateLimitError naming the full limit."""
        caller = caller_id(key_id)
        limits = self._config.for_key(key_id)
        now = self._clock()
        state = self._state(caller, limits, now)
        wanted = {"requests": 1, "tokens": tokens, "images": images}
        if limits.concurrent_requests is not None \
                and len(state.leases) >= limits.concurrent_requests:
            soonest = min(state.leases.values()) - now
            raise RateLimitError(
                f"Rate limit reached for key {caller!r} on concurrent requests: limit "
                f"{limits.concurrent_requests}, in flight {len(state.leases)}. Wait for one "
                "to finish.", limit="concurrency", retry_after_s=min(max(soonest, 1.0), 5.0))
        for kind, bucket in state.buckets.items():
            amount = wanted[kind]
            if amount > bucket.capacity:
                what = "max_tokens or the prompt" if kind == "tokens" else "the images"
                raise RateLimitError(
                    f"Request too large for key {caller!r} on {kind} per minute: limit "
                    f"{bucket.capacity}, requested {amount}. Reduce {what} or ask for a "
                    "higher limit.", limit=kind, retry_after_s=WINDOW_S)
            if bucket.level < amount:
                wait = bucket.wait_for(amount)
                raise RateLimitError(
                    f"Rate limit reached for key {caller!r} on {kind} per minute: limit "
                    f"{bucket.capacity}, remaining {math.floor(bucket.level)}, requested "
                    f"{amount}. Retry in {format_reset(wait)}.", limit=kind, retry_after_s=wait)
        for kind, bucket in state.buckets.items():
            bucket.level -= wanted[kind]
        lease = None
        if limits.concurrent_requests is not None:
            lease = uuid.uuid4().hex
            state.leases[lease] = now + self._ttl
        return RateLease(caller, lease, tokens if "tokens" in state.buckets else 0,
                         self._headers(state, limits))

    def finish(self, caller: str, lease: str | None, reserved_tokens: int,
               used_tokens: int | None) -> None:
        """End a request: free its lease, settle its token reservation with the real usage."""
        state = self._keys.get(caller)
        if state is None:
            return
        if lease is not None:
            state.leases.pop(lease, None)
        bucket = state.buckets.get("tokens")
        if bucket is not None and used_tokens is not None and reserved_tokens:
            bucket.refill(self._clock())
            bucket.level = min(bucket.capacity, bucket.level + reserved_tokens - used_tokens)

    def headers(self, key_id: str | None) -> dict[str, str]:
        caller = caller_id(key_id)
        limits = self._config.for_key(key_id)
        return self._headers(self._state(caller, limits, self._clock()), limits)

    @staticmethod
    def _headers(state: KeyState, limits: KeyLimits) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, bucket in state.buckets.items():
            out[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
            out[f"x-ratelimit-reset-{kind}"] = format_reset(bucket.reset_s())
        if limits.concurrent_requests is not None:
            out["x-ratelimit-limit-concurrent"] = str(limits.concurrent_requests)
            out["x-ratelimit-remaining-concurrent"] = str(
                max(0, limits.concurrent_requests - len(state.leases)))
        return out


class RateLimiter:
    """The Serve replica holding the :class:`LimitBook` (exactly one replica)."""

    def __init__(self, config: ServingConfig):
        self._book = LimitBook(config.limits, lease_ttl_s=config.server.request_timeout_s + 60)

    async def admit(self, key_id: str | None, tokens: int, images: int) -> RateLease:
        return self._book.admit(key_id, tokens=tokens, images=images)

    async def finish(self, caller: str, lease: str | None, reserved_tokens: int,
                     used_tokens: int | None) -> None:
        self._book.finish(caller, lease, reserved_tokens, used_tokens)

    async def headers(self, key_id: str | None) -> dict[str, str]:
        return self._book.headers(key_id)


def limiter_deployment(config: ServingConfig) -> serve.Deployment:
    return serve.deployment(
        RateLimiter, name=LIMITER, num_replicas=1,
        ray_actor_options={"num_cpus": 0, **({"resources": dict(config.batch.resources)}
                                             if config.batch.resources else {})},
        max_ongoing_requests=4096, health_check_period_s=5,
        logging_config={"enable_access_log": False, "encoding": config.server.log_encoding},
    )
