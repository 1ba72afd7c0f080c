"""Router/ingress: the OpenAI-compatible HTTP surface, auth, and dispatch to the other tiers.

Hops are kept to the minimum: a text-only request goes router -> generator; a request with
images sends the URLs to the ImagePreprocessor and passes its *pending* response straight into
the generator call, so pixels flow preprocessor -> generator through Ray's object store without
ever visiting the router.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.auth import ApiKeyAuthenticator
from serving.config import ServingConfig
from serving.errors import (
    ImageError,
    ModelNotFoundError,
    QVQError,
    ServiceUnavailableError,
    to_api_error,
)
from serving.images.sources import classify_url
from serving.openai_errors import error_response, install_error_handlers, validation_to_error
from serving.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    GenerationEvent,
    GenerationRequest,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
    new_completion_id,
    now,
)

logger = logging.getLogger("qvq.router")

HEALTH_TIMEOUT_S = 10.0


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_to_error(exc) from None


class ChatFrontend:
    """Request handling independent of FastAPI routing (unit-testable with fake handles)."""

    def __init__(self, config: ServingConfig, preprocessor: Any, generator: Any):
        self._config = config
        self._pre = preprocessor
        self._gen = generator
        self._auth = ApiKeyAuthenticator(config.auth.resolve_keys())
        self._model_ids = set(config.model.model_ids)
        self._created = now()

    def authenticate(self, request: Request) -> str | None:
        return self._auth.authenticate(request.headers.get("authorization"))

    def models(self) -> ModelList:
        cfg = self._config.model
        return ModelList(data=[ModelCard(id=m, created=self._created, root=cfg.path,
                                         max_model_len=cfg.max_model_len)
                               for m in cfg.model_ids])

    def model(self, model_id: str) -> ModelCard:
        if model_id not in self._model_ids:
            raise ModelNotFoundError(f"The model {model_id!r} does not exist; this server "
                                     f"serves {sorted(self._model_ids)}.", param="model")
        cfg = self._config.model
        return ModelCard(id=model_id, created=self._created, root=cfg.path,
                         max_model_len=cfg.max_model_len)

    def _validate(self, chat: ChatCompletionRequest) -> list[str]:
        self.model(chat.model)
        urls = chat.image_urls()
        limit = self._config.image.max_images_per_request
        if len(urls) > limit:
            raise ImageError(f"request has {len(urls)} images; at most {limit} are allowed per "
                             "request", param="messages", code="too_many_images")
        for url in urls:
            classify_url(url)
        return urls

    def _dispatch(self, chat: ChatCompletionRequest, key_id: str | None, method: str):
        urls = self._validate(chat)
        request = GenerationRequest(request_id=new_completion_id(),
                                    chat=chat.without_image_data() if urls else chat,
                                    key_id=key_id)
        images: Any = self._pre.prepare.remote(urls) if urls else []
        gen = self._gen
        if method == "stream":
            gen = gen.options(stream=True)
        return request, getattr(gen, method).remote(request, images)

    async def complete(self, chat: ChatCompletionRequest, key_id: str | None) -> ChatCompletion:
        request, pending = self._dispatch(chat, key_id, "complete")
        final: GenerationEvent = await pending
        return ChatCompletion(
            id=request.request_id, created=request.created, model=chat.model,
            choices=[Choice(message=ResponseMessage(content=final.text),
                            finish_reason=final.finish_reason)],
            usage=_usage(final))

    async def open_stream(self, chat: ChatCompletionRequest,
                          key_id: str | None) -> AsyncIterator[bytes]:
        """Start generation and wait for acceptance; errors before that raise (HTTP status)."""
        request, stream = self._dispatch(chat, key_id, "stream")
        try:
            accepted = await stream.__anext__()
        except BaseException:
            stream.cancel()
            raise
        return self._sse(request, chat, stream, accepted)

    async def _sse(self, request: GenerationRequest, chat: ChatCompletionRequest, stream: Any,
                   accepted: GenerationEvent) -> AsyncIterator[bytes]:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None,
                  choices: bool = True) -> bytes:
            body = ChatCompletionChunk(
                id=request.request_id, created=request.created, model=chat.model,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else [],
                usage=usage)
            return b"data: " + body.model_dump_json(exclude_none=not usage).encode() + b"\n\n"

        try:
            yield chunk(Delta(role="assistant", content=""))
            final = None
            async for event in stream:
                if event.text:
                    yield chunk(Delta(content=event.text))
                if event.kind == "final":
                    final = event
            if final is None:
                raise ServiceUnavailableError("generation ended without a result; retry")
            yield chunk(Delta(), finish=final.finish_reason)
            if include_usage:
                yield chunk(Delta(), usage=_usage(final), choices=False)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - becomes an OpenAI error event
            api_exc = to_api_error(exc)
            if not isinstance(api_exc, QVQError) or api_exc.status_code >= 500:
                logger.error("stream %s failed: %r", request.request_id, exc)
            yield b"data: " + json.dumps(api_exc.to_openai()).encode() + b"\n\n"
        finally:
            stream.cancel()
        yield b"data: [DONE]\n\n"

    async def health(self) -> dict[str, str]:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await asyncio.gather(self._gen.probe.remote(), self._pre.ping.remote())
        except Exception as exc:  # noqa: BLE001
            logger.warning("health probe failed: %r", exc)
            raise ServiceUnavailableError("engine or preprocessor is not healthy",
                                          code="unhealthy") from None
        return {"status": "ok"}


def _usage(final: GenerationEvent) -> Usage:
    return Usage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens,
                 total_tokens=final.prompt_tokens + final.completion_tokens)


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def build_api() -> FastAPI:
    api = FastAPI(title="qvq-serving", version="0.1.0",
                  description="OpenAI-compatible API for QVQ-72B-Preview")
    install_error_handlers(api)
    return api


def router_deployment(config: ServingConfig) -> serve.Deployment:
    api = build_api()

    @serve.ingress(api)
    class Router:
        def __init__(self, config: ServingConfig, preprocessor: DeploymentHandle,
                     generator: DeploymentHandle):
            self.frontend = ChatFrontend(config, preprocessor, generator)

        @api.post("/v1/chat/completions")
        async def chat_completions(self, request: Request) -> Response:
            try:
                key_id = self.frontend.authenticate(request)
                chat = parse_chat_request(await request.body())
                if chat.stream:
                    body = await self.frontend.open_stream(chat, key_id)
                    return StreamingResponse(body, media_type="text/event-stream",
                                             headers={"Cache-Control": "no-cache"})
                return _json(await self.frontend.complete(chat, key_id))
            except Exception as exc:  # noqa: BLE001 - the one error mapping
                return error_response(exc)

        @api.get("/v1/models")
        async def list_models(self, request: Request) -> Response:
            try:
                self.frontend.authenticate(request)
                return _json(self.frontend.models())
            except Exception as exc:  # noqa: BLE001
                return error_response(exc)

        @api.get("/v1/models/{model_id:path}")
        async def get_model(self, model_id: str, request: Request) -> Response:
            try:
                self.frontend.authenticate(request)
                return _json(self.frontend.model(model_id))
            except Exception as exc:  # noqa: BLE001
                return error_response(exc)

        @api.get("/health")
        async def health(self) -> Response:
            try:
                return JSONResponse(await self.frontend.health())
            except Exception as exc:  # noqa: BLE001
                return error_response(exc)

    dep = config.deployments.router
    return serve.deployment(
        Router, name="Router",
        ray_actor_options={"num_cpus": dep.num_cpus},
        max_ongoing_requests=dep.max_ongoing_requests,
        autoscaling_config=dep.autoscaling.to_serve(),
    )

