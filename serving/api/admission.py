"""RateLease at the chat entry: who may start a chat request now, and what each response
reports.

Two gates, in order, before any work is dispatched:

1. *Capacity* (every replica of the chat entry): at most ``server.max_in_flight_requests`` in
   flight per replica; more get 503 with ``Retry-After`` at once, so overload never turns into
   an unbounded queue, growing memory or timeouts. Deployment queues behind the router are
   bounded too (``deployments.*.max_queued_requests``: Serve refuses beyond them, which also
   becomes a 503 with ``Retry-After``).
2. *Per-key limits* (when configured): one call to the shared :class:`~serving.api.limits.
   RateLimiter`, which admits or raises 429 with ``Retry-After``. Its ``x-ratelimit-*``
   headers go on the response, error or not; the other routes of a limited key fetch them
   (:meth:`Gatekeeper.headers_for`), so every response of that key carries them.

:class:`RequestScope` (a context variable set per request by the API middleware) carries the
caller and headers to where the response is built, and feeds the API metrics.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from serving.api.auth import caller_id
from serving.api.limits import RateLease
from serving.config import ServingConfig
from serving.errors import RateLimitError, ServiceUnavailableError, unwrap
from serving.messages import Completion, GenerationRequest
from serving.metrics import ApiMetrics, add
from serving.preprocess.geometry import visual_tokens
from serving.protocol import TextPart

logger = logging.getLogger("qvq.admission")

CHARS_PER_TOKEN = 4  # prompt estimate before tokenization; settled with real usage afterwards


@dataclass
class RequestScope:
    """One API request as the middleware (:mod:`serving.api.middleware`) opened it: when it
    started, who called (once authenticated), the rate-limit headers its response carries."""

    started: float = field(default_factory=time.monotonic)
    key_id: str | None = None
    authenticated: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    error_code: str = ""  # an error response's OpenAI code (or type), for the metrics

    @property
    def caller(self) -> str:
        return caller_id(self.key_id)

    def authenticated_as(self, key_id: str | None) -> None:
        self.key_id, self.authenticated = key_id, True


_scope: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "qvq_request_scope", default=None)


def open_scope() -> tuple[RequestScope, contextvars.Token]:
    scope = RequestScope()
    return scope, _scope.set(scope)


def close_scope(token: contextvars.Token) -> None:
    _scope.reset(token)


def current_scope() -> RequestScope | None:
    return _scope.get()


@dataclass
class Ticket:
    """One admitted chat request: give it back with :meth:`Gatekeeper.leave`."""

    caller: str
    rate_lease: RateLease | None


def estimate_tokens(request: GenerationRequest, *, max_pixels: int,
                    default_max_tokens: int) -> int:
    """Prompt (text / 4, each image at its largest grid) plus the completion budget."""
    chat = request.chat
    chars = 0
    for message in chat.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.text) for part in content if isinstance(part, TextPart))
    image_tokens = 0
    for image in request.images:  # each at its largest grid, within its own pixel budget
        side = int((image.max_pixels or max_pixels) ** 0.5)
        image_tokens += visual_tokens(side, side)
    return chars // CHARS_PER_TOKEN + image_tokens + (chat.requested_max_tokens
                                                      or default_max_tokens) * chat.n


class Gatekeeper:
    def __init__(self, config: ServingConfig, limiter: Any | None, metrics: ApiMetrics):
        self._config = config
        self._limiter = limiter if config.limits.any_limits else None
        self._metrics = metrics
        self._max_in_flight = config.max_in_flight_chats
        self._timeout = config.limits.limiter_timeout_s
        self.in_flight = 0
        self._pending: set[asyncio.Task] = set()

    def refuse_if_full(self) -> None:
        """503 at once when this replica is at capacity. Called before the body is read too,
        so a refusal costs no parsing: under overload, refusals are most of the traffic."""
        if self.in_flight >= self._max_in_flight:
            self._metrics.admission_rejected.inc(tags={"deployment": self._metrics.chat_entry})
            raise ServiceUnavailableError(
                f"The server is at capacity ({self._max_in_flight} requests in flight on this "
                "replica); retry shortly.", code="overloaded", retry_after_s=2)

    async def enter(self, request: GenerationRequest) -> Ticket:
        """Admit a validated request (capacity, then per-key limits) or raise 503/429."""
        caller = caller_id(request.key_id)
        self.refuse_if_full()
        rate_lease = None
        if self._limiter is not None:
            rate_lease = await self._charge(request, caller, current_scope())
        self.in_flight += 1
        return Ticket(caller, rate_lease)

    async def _charge(self, request: GenerationRequest, caller: str,
                     scope: RequestScope | None) -> RateLease | None:
        model = self._config.model
        key_id = request.key_id
        tokens = estimate_tokens(request, max_pixels=self._config.image.max_pixels,
                                 default_max_tokens=min(model.default_max_tokens,
                                                        model.max_model_len))
        try:
            async with asyncio.timeout(self._timeout):
                rate_lease: RateLease = await self._limiter.admit.remote(
                    key_id, tokens, len(request.images))
        except TimeoutError:
            logger.warning("rate limiter did not answer in %.1fs; admitting %s unlimited",
                           self._timeout, caller)
            return None
        except Exception as exc:  # noqa: BLE001 - 429s pass through; an absent limiter admits
            cause = unwrap(exc)
            if isinstance(cause, RateLimitError):
                self._metrics.rate_limited.inc(tags={"key": caller, "limit": cause.limit})
                if scope is not None:
                    scope.headers.update(await self._headers(key_id))
                raise cause from None
            logger.warning("rate limiter unavailable (%r); admitting %s unlimited", exc, caller)
            return None
        if scope is not None:
            scope.headers.update(rate_lease.headers)
        return rate_lease

    async def headers_for(self, scope: RequestScope) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of a limited caller whose response did not pass
        admission (files, batches, images, models, or a chat refused before it): every response
        of a limited key carries them. Unlimited keys pay no limiter hop."""
        if (self._limiter is None or not scope.authenticated
                or not self._config.limits.for_key(scope.key_id).limited):
            return {}
        return await self._headers(scope.key_id)

    async def _headers(self, key_id: str | None) -> dict[str, str]:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._limiter.headers.remote(key_id)
        except Exception:  # noqa: BLE001 - headers are informative only
            return {}

    def leave(self, ticket: Ticket, final: Completion | None) -> None:
        """Request over (finished, failed or cancelled): free its slot, settle its tokens."""
        self.in_flight -= 1
        if final is not None:
            tokens = self._metrics.tokens
            add(tokens, final.prompt_tokens, {"key": ticket.caller, "kind": "prompt"})
            add(tokens, final.completion_tokens, {"key": ticket.caller, "kind": "completion"})
            add(tokens, final.reasoning_tokens or 0, {"key": ticket.caller, "kind": "reasoning"})
        rate_lease = ticket.rate_lease
        if rate_lease is not None and self._limiter is not None:
            used = None if final is None else final.prompt_tokens + final.completion_tokens
            task = asyncio.get_running_loop().create_task(self._finish(rate_lease, used))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _finish(self, rate_lease: RateLease, used: int | None) -> None:
        try:
            async with asyncio.timeout(5):
                await self._limiter.finish.remote(rate_lease.caller, rate_lease.lease,
                                                  rate_lease.reserved_tokens, used)
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            logger.warning("could not release a rate-limit lease of %s: %r", rate_lease.caller,
                           exc)
