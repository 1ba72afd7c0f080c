"""Chat completions over HTTP: one endpoint, served where the configuration puts it.

:class:`ChatEndpoint` does what a chat request needs between the HTTP body and the engine:
authentication, admission (capacity and per-key limits), validation before any work (model,
reasoning options, image URLs), the images through the preprocessor, generation, and the
OpenAI answer (one JSON body or an SSE stream). Where generation runs is a
:class:`Generation`:

- :class:`LocalGeneration` (``server.chat_entry: generator``, the default): the generator
  replica is itself the HTTP ingress of ``/v1/chat/completions`` (a Serve application of its
  own at ``/v1/chat``), so each token goes from vLLM to the client's socket in one process,
  as in vLLM's own server. The preprocessor still decodes and resizes every image (a Serve
  call from here), and this replica's event loop does the HTTP work, which is small per token
  next to relaying each token through Ray (``loadtest/README.md``, "Streaming").
- :class:`RemoteGeneration` (``server.chat_entry: router``): the router replica serves the
  route and calls the generator through Serve; a stream crosses that hop in batches
  (:mod:`serving.generate.streaming`). The router outlives a generator that dies, so a
  stream then ends with an error event and a request that had produced nothing is sent to
  another replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from serving.api.admission import Gatekeeper, RequestScope, Ticket, current_scope
from serving.api.auth import ApiKeyAuthenticator, caller_id
from serving.api.errors import validation_to_error
from serving.api.http import image_headers, json_response, read_json_body
from serving.api.limits import limit_kinds
from serving.api.validation import check_model, validate_chat
from serving.config import ServingConfig
from serving.errors import (
    QVQError,
    ServiceUnavailableError,
    replica_died,
    to_api_error,
    unwrap,
)
from serving.messages import (
    LIVE_PRIORITY,
    Completion,
    GenerationEvent,
    GenerationRequest,
    PreparedImage,
    completion_response,
    wire_logprobs,
)
from serving.metrics import ApiMetrics
from serving.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    Usage,
)
from serving.roles import chat_entry

logger = logging.getLogger("qvq.chat")

Batches = AsyncIterator[tuple[GenerationEvent, ...]]


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_to_error(exc) from None


async def with_retries(what: str, call: Callable[[], Any], retries: int,
                       on_retry: Callable[[], None] | None = None) -> Any:
    """``await call()``, again up to ``retries`` times when a replica died under it (no fault
    of the request: Serve routes the next try to a healthy or replacement replica)."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if on_retry is not None:
                on_retry()
            if attempt == retries or not replica_died(exc):
                raise
            attempt += 1
            logger.warning("%s: a replica died (%s); sending it again (attempt %d)", what,
                           type(unwrap(exc)).__name__, attempt + 1)
            await asyncio.sleep(0.5 * attempt)


class Generation(Protocol):
    """Where a validated request is generated: here, or on a generator replica."""

    async def complete(self, request: GenerationRequest,
                       priority: int = LIVE_PRIORITY) -> Completion:
        """The whole answer: each choice's ``final`` event (text, reasoning, counts, report).
        ``priority``: LIVE_PRIORITY for API traffic, BATCH_PRIORITY for batch lines."""
        ...

    async def open_stream(self, request: GenerationRequest) -> tuple[GenerationEvent, Batches]:
        """Start a stream and wait for its ``accepted`` event; errors before it raise. The
        batches that follow end with the ``final`` event; closing them aborts generation."""
        ...

    async def check(self) -> None:
        """Raise when generation cannot be served now (engine or preprocessor down)."""
        ...


class LocalGeneration:
    """Generation in this process (the generator replica serving HTTP): images are prepared
    by the preprocessor first, then the engine runs here."""

    def __init__(self, generator: Any, preprocessor: Any, retries: int):
        self._gen = generator  # a serving.generate.generator.QVQGenerator
        self._pre = preprocessor
        self._retries = retries

    async def _images(self, request: GenerationRequest) -> Sequence[PreparedImage]:
        if not request.images:
            return []
        sources = list(request.images)
        return await with_retries(request.request_id,
                                  lambda: self._pre.prepare.remote(sources), self._retries)

    async def complete(self, request: GenerationRequest,
                       priority: int = LIVE_PRIORITY) -> Completion:
        return await self._gen.complete(request, await self._images(request), priority)

    async def open_stream(self, request: GenerationRequest) -> tuple[GenerationEvent, Batches]:
        events = self._gen.live_events(request, await self._images(request))
        try:
            accepted = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise

        async def batches() -> Batches:
            async with aclosing(events):
                async for event in events:
                    yield (event,)

        return accepted, batches()

    async def check(self) -> None:
        await self._gen.check_health()
        await self._pre.ping.remote()


class RemoteGeneration:
    """Generation on a generator replica through Serve. Images are not resolved here: the
    preprocessor's pending answer goes into the generator call, so pixels travel preprocessor
    -> generator through Ray's object store without visiting this process."""

    def __init__(self, generator: Any, preprocessor: Any, retries: int):
        self._gen = generator
        self._pre = preprocessor
        self._retries = retries

    def _images(self, request: GenerationRequest) -> Any:
        return self._pre.prepare.remote(list(request.images)) if request.images else []

    async def complete(self, request: GenerationRequest,
                       priority: int = LIVE_PRIORITY) -> Completion:
        return await with_retries(
            request.request_id,
            lambda: self._gen.complete.remote(request, self._images(request), priority),
            self._retries)

    async def open_stream(self, request: GenerationRequest) -> tuple[GenerationEvent, Batches]:
        calls: list[Any] = []

        async def first() -> tuple[GenerationEvent, ...]:
            calls.append(self._gen.options(stream=True).stream.remote(
                request, self._images(request)))
            return await calls[-1].__anext__()

        accepted, *early = await with_retries(request.request_id, first, self._retries,
                                              on_retry=lambda: calls[-1].cancel())
        stream = calls[-1]

        async def batches() -> Batches:
            try:
                if early:
                    yield tuple(early)
                async for batch in stream:
                    yield batch
            finally:
                stream.cancel()  # the generator closes its side: vLLM aborts the request

        return accepted, batches()

    async def check(self) -> None:
        await asyncio.gather(self._gen.probe.remote(), self._pre.ping.remote())


class ChunkRenderer:
    """The SSE bytes of one stream's ``chat.completion.chunk`` objects.

    Text chunks are most of a long answer's chunks, so they are rendered from bytes made once
    per stream plus the JSON of the text alone; they equal what the pydantic models give with
    ``exclude_none`` (tests/unit/api/test_chat.py compares them). The role, final and usage
    chunks, once per stream, come from the models.
    """

    def __init__(self, request_id: str, created: int, model: str):
        self._request_id, self._created, self._model = request_id, created, model
        head = json.dumps({"id": request_id, "object": "chat.completion.chunk",
                           "created": created, "model": model},
                          ensure_ascii=False, separators=(",", ":"))
        self._head = b"data: " + head[:-1].encode() + b',"choices":[{"index":0,"delta":'

    def _model_chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        body = ChatCompletionChunk(id=self._request_id, created=self._created,
                                   model=self._model, choices=choices, usage=usage)
        return b"data: " + body.model_dump_json(exclude_none=usage is None).encode() + b"\n\n"

    def role(self, index: int = 0) -> bytes:
        return self._model_chunk([ChunkChoice(index=index,
                                              delta=Delta(role="assistant", content=""))])

    def delta(self, content: str, reasoning: str) -> bytes:
        fields = {}
        if content:
            fields["content"] = content
        if reasoning:
            fields["reasoning_content"] = reasoning
        return self._head + json.dumps(fields, ensure_ascii=False,
                                       separators=(",", ":")).encode() + b"}]}\n\n"

    def event(self, event: GenerationEvent, with_logprobs: bool) -> bytes:
        """A delta event: the fast path for choice 0 without logprobs, else from the models."""
        if event.index == 0 and not with_logprobs:
            return self.delta(event.text, event.reasoning)
        delta = Delta(content=event.text or None, reasoning_content=event.reasoning or None)
        logprobs = wire_logprobs(event.logprobs, event.reasoning_logprobs) \
            if with_logprobs else None
        return self._model_chunk([ChunkChoice(index=event.index, delta=delta,
                                              logprobs=logprobs)])

    def final(self, final: GenerationEvent) -> bytes:
        return self._model_chunk([ChunkChoice(index=final.index, delta=Delta(),
                                              finish_reason=final.finish_reason,
                                              stop_reason=final.stop_reason,
                                              qvq=final.report())])

    def usage(self, usage: Usage) -> bytes:
        return self._model_chunk([], usage)


class ChatEndpoint:
    """One chat completion from parsed body to answer, independent of FastAPI routing and of
    where generation runs (unit-testable with a scripted :class:`Generation`)."""

    def __init__(self, config: ServingConfig, generation: Generation,
                 limiter: Any | None = None):
        self._config = config
        self.generation = generation
        keys = config.auth.resolve_keys()
        self._auth = ApiKeyAuthenticator(keys)
        known = [key.id for key in keys] or [None]  # None: the open API's anonymous caller
        self.metrics = ApiMetrics({caller_id(key_id): limit_kinds(config.limits.for_key(key_id))
                                   for key_id in known}, chat_entry=chat_entry(config))
        self.gate = Gatekeeper(config, limiter, self.metrics)
        self.max_body_bytes = config.server.max_request_body_bytes

    def authenticate(self, request: Request) -> str | None:
        key_id = self._auth.authenticate(request.headers.get("authorization"))
        scope = current_scope()
        if scope is not None:
            scope.authenticated_as(key_id)
        return key_id

    def check_model(self, model_id: str) -> None:
        check_model(self._config, model_id)

    def validate(self, chat: ChatCompletionRequest, key_id: str | None) -> GenerationRequest:
        """The one check before any hop (serving.api.validation), counted in the metrics."""
        request = validate_chat(self._config, chat, key_id)
        if request.images:
            self.metrics.images.inc(len(request.images), tags={"key": caller_id(key_id)})
        return request

    async def answer(self, request: Request) -> Response:
        """``POST /v1/chat/completions``, wherever it is served. Capacity is checked before
        the body is read: under overload, refusals are most of the traffic."""
        key_id = self.authenticate(request)
        self.gate.refuse_if_full()
        chat = parse_chat_request(await read_json_body(request, self.max_body_bytes))
        if chat.stream:
            body, accepted = await self.open_stream(chat, key_id)
            return StreamingResponse(body, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              **image_headers(accepted)})
        body, completion = await self.complete(chat, key_id)
        response = json_response(body)
        response.headers.update(image_headers(completion))
        return response

    async def complete(self, chat: ChatCompletionRequest,
                       key_id: str | None) -> tuple[ChatCompletion, Completion]:
        request = self.validate(chat, key_id)
        ticket = await self.gate.enter(request)
        completion: Completion | None = None
        try:
            completion = await self.generation.complete(request)
        finally:
            self.gate.leave(ticket, completion)
        return completion_response(request.request_id, request.created, chat.model, completion,
                                   with_logprobs=chat.logprobs), completion

    async def open_stream(self, chat: ChatCompletionRequest,
                          key_id: str | None) -> tuple[AsyncIterator[bytes], GenerationEvent]:
        """Start generation and wait for acceptance; errors before that raise (HTTP status)."""
        request = self.validate(chat, key_id)
        ticket = await self.gate.enter(request)
        try:
            accepted, batches = await self.generation.open_stream(request)
        except BaseException:
            self.gate.leave(ticket, None)
            raise
        return self._sse(request, chat, batches, ticket, current_scope()), accepted

    async def _sse(self, request: GenerationRequest, chat: ChatCompletionRequest,
                   batches: Batches, ticket: Ticket,
                   scope: RequestScope | None) -> AsyncIterator[bytes]:
        """The SSE body: the role chunk, one chunk per batch of text, the final chunk, the
        usage chunk; an error after the headers went out becomes an error event."""
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        chunks = ChunkRenderer(request.request_id, request.created, chat.model)
        finals: dict[int, GenerationEvent] = {}
        completion = None
        first_text = True
        try:
            for index in range(chat.n):
                yield chunks.role(index)
            async with aclosing(batches):
                async for batch in batches:
                    for event in batch:
                        if event.text or event.reasoning or event.logprobs \
                                or event.reasoning_logprobs:
                            if first_text and scope is not None:
                                first_text = False
                                self.metrics.stream_ttft.observe(time.monotonic()
                                                                 - scope.started)
                            yield chunks.event(event, chat.logprobs)
                        if event.kind == "final":
                            finals[event.index] = event
                            yield chunks.final(event)
            if len(finals) != chat.n:
                raise ServiceUnavailableError("generation ended without a result; retry")
            completion = Completion(tuple(finals[i] for i in range(chat.n)))
            if include_usage:
                yield chunks.usage(completion.usage())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - becomes an OpenAI error event
            api_exc = to_api_error(exc)
            if not isinstance(api_exc, QVQError) or api_exc.status_code >= 500:
                logger.error("stream %s failed: %r", request.request_id, exc)
            yield b"data: " + json.dumps(api_exc.to_openai()).encode() + b"\n\n"
        finally:
            self.gate.leave(ticket, completion)
        yield b"data: [DONE]\n\n"

    async def health(self) -> dict[str, str]:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self.generation.check()
        except Exception as exc:  # noqa: BLE001
            logger.warning("health probe failed: %r", exc)
            raise ServiceUnavailableError("engine or preprocessor is not healthy",
                                          code="unhealthy") from None
        return {"status": "ok"}


HEALTH_TIMEOUT_S = 10.0
