"""The router's capacity gate: a full replica refuses at once with 503 overloaded and a
Retry-After, before reading the body; a finished request gives its slot back."""

from __future__ import annotations

import asyncio

import pytest

from serving.admission import Gatekeeper
from serving.config import config_from_dict
from serving.errors import ServiceUnavailableError
from serving.metrics import RouterMetrics
from serving.protocol import ChatCompletionRequest

BASE = {"model": {"path": "/models/x", "served_name": "qvq"}}


def chat() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "qvq", "messages": [{"role": "user", "content": "hi"}]})


def test_full_replica_refuses_then_frees_a_slot():
    config = config_from_dict({**BASE, "server": {"max_in_flight_requests": 2}}, environ={})
    gate = Gatekeeper(config, limiter=None, metrics=RouterMetrics())

    async def scenario():
        first = await gate.enter(chat(), "key-a")
        await gate.enter(chat(), None)
        with pytest.raises(ServiceUnavailableError) as full:
            gate.refuse_if_full()  # the check the route runs before reading the body
        with pytest.raises(ServiceUnavailableError):
            await gate.enter(chat(), "key-a")
        assert gate.in_flight == 2
        gate.leave(first, None)
        gate.refuse_if_full()
        await gate.enter(chat(), "key-b")
        return full.value

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.code == "overloaded"
    assert refused.retry_after_s >= 1
    assert "2 requests in flight" in str(refused)
