"""The chat entry's gate: a full replica refuses at once with 503 overloaded and a Retry-After,
before reading the body; a finished request gives its slot back; every response of a limited
key gets its x-ratelimit-* headers, other keys none."""

from __future__ import annotations

import asyncio

import pytest

from serving.api.admission import Gatekeeper, RequestScope
from serving.api.limits import LimitBook
from serving.api.validation import validate_chat
from serving.config import config_from_dict
from serving.errors import ServiceUnavailableError
from serving.messages import GenerationRequest
from serving.metrics import ApiMetrics
from serving.protocol import ChatCompletionRequest

BASE = {"model": {"path": "/models/x", "served_name": "qvq"}}


def request(key_id: str | None, config) -> GenerationRequest:
    chat = ChatCompletionRequest.model_validate(
        {"model": "qvq", "messages": [{"role": "user", "content": "hi"}]})
    return validate_chat(config, chat, key_id)


def test_full_replica_refuses_then_frees_a_slot():
    config = config_from_dict({**BASE, "server": {"max_in_flight_requests": 2}}, environ={})
    gate = Gatekeeper(config, limiter=None, metrics=ApiMetrics())

    async def scenario():
        first = await gate.enter(request("key-a", config))
        await gate.enter(request(None, config))
        with pytest.raises(ServiceUnavailableError) as full:
            gate.refuse_if_full()  # the check the route runs before reading the body
        with pytest.raises(ServiceUnavailableError):
            await gate.enter(request("key-a", config))
        assert gate.in_flight == 2
        gate.leave(first, None)
        gate.refuse_if_full()
        await gate.enter(request("key-b", config))
        return full.value

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.code == "overloaded"
    assert refused.retry_after_s >= 1
    assert "2 requests in flight" in str(refused)


class _LimiterHandle:
    """The RateLimiter's handle surface (``.headers.remote``) over a real LimitBook."""

    def __init__(self, book: LimitBook):
        book_headers = book.headers

        class _Method:
            @staticmethod
            async def remote(key_id):
                return book_headers(key_id)

        self.headers = _Method()


def test_every_response_of_a_limited_key_gets_rate_headers_unlimited_keys_none():
    config = config_from_dict({**BASE, "limits": {
        "per_key": {"team-a": {"requests_per_minute": 5}}}}, environ={})
    book = LimitBook(config.limits, lease_ttl_s=60)
    gate = Gatekeeper(config, limiter=_LimiterHandle(book), metrics=ApiMetrics())

    def scope_of(key_id, authenticated=True):
        scope = RequestScope("list_files")
        if authenticated:
            scope.authenticated_as(key_id)
        return scope

    limited = asyncio.run(gate.headers_for(scope_of("team-a")))
    assert limited["x-ratelimit-limit-requests"] == "5"
    assert limited["x-ratelimit-remaining-requests"] == "5"  # looking does not charge
    assert asyncio.run(gate.headers_for(scope_of("team-b"))) == {}
    assert asyncio.run(gate.headers_for(scope_of(None))) == {}
    assert asyncio.run(gate.headers_for(scope_of("team-a", authenticated=False))) == {}


def test_an_answer_without_reasoning_tokens_is_settled():
    """A schema-constrained answer counts 0 reasoning tokens; Ray's counters refuse an
    increment of 0, which must not turn the finished request into a 500."""
    from serving.generate.reasoning.session import ReasoningOutcome
    from serving.messages import Completion, GenerationEvent

    config = config_from_dict(BASE, environ={})
    gate = Gatekeeper(config, limiter=None, metrics=ApiMetrics())
    outcome = ReasoningOutcome(split=False, final_answer_found=False, boxed=[],
                               reasoning_tokens=0)
    final = GenerationEvent("final", prompt_tokens=12, completion_tokens=5, outcome=outcome)

    async def scenario():
        ticket = await gate.enter(request("key-a", config))
        gate.leave(ticket, Completion((final,)))

    asyncio.run(scenario())
    assert gate.in_flight == 0
