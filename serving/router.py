"""Router/ingress: the OpenAI-compatible HTTP surface, auth, and dispatch to the other tiers.

Hops are kept to the minimum: a text-only request goes router -> generator; a request with
images sends the URLs to the ImagePreprocessor and passes its *pending* response straight into
the generator call, so pixels flow preprocessor -> generator through Ray's object store without
ever visiting the router.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.admission import (
    Gatekeeper,
    RequestScope,
    Ticket,
    close_scope,
    current_scope,
    open_scope,
)
from serving.auth import ApiKeyAuthenticator, caller_id
from serving.batch.store import TERMINAL, BatchStore, new_batch, public
from serving.batch.validate import ENDPOINT as BATCH_ENDPOINT
from serving.config import ServingConfig
from serving.errors import (
    ImageError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    QVQError,
    RateLimitError,
    ServiceUnavailableError,
    replica_died,
    to_api_error,
    unwrap,
)
from serving.files import FileStore
from serving.images.sources import describe_size, request_image_urls
from serving.limits import limit_kinds
from serving.logs import route_to_serve_logs
from serving.metrics import RouterMetrics
from serving.openai_errors import error_response, install_error_handlers, validation_to_error
from serving.openapi import install_openapi
from serving.protocol import (
    BatchCreateRequest,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    GenerationEvent,
    GenerationRequest,
    ModelCard,
    ModelList,
    Usage,
    completion_response,
    new_completion_id,
    now,
    usage_of,
)
from serving.reasoning.options import resolve_reasoning_options
from serving.storage.factory import open_store

logger = logging.getLogger("qvq.router")

HEALTH_TIMEOUT_S = 10.0


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_to_error(exc) from None


class ChatFrontend:
    """Request handling independent of FastAPI routing (unit-testable with fake handles)."""

    def __init__(self, config: ServingConfig, preprocessor: Any, generator: Any,
                 limiter: Any | None = None):
        self._config = config
        self.pre = preprocessor
        self._gen = generator
        keys = config.auth.resolve_keys()
        self._auth = ApiKeyAuthenticator(keys)
        known = [key.id for key in keys] or [None]  # None: the open API's anonymous caller
        self.metrics = RouterMetrics({caller_id(key_id): limit_kinds(config.limits.for_key(key_id))
                                      for key_id in known})
        self.gate = Gatekeeper(config, limiter, self.metrics)
        self.max_body_bytes = config.server.max_request_body_bytes
        self._retries = config.server.replica_failure_retries
        self._model_ids = set(config.model.model_ids)
        self.max_image_bytes = config.image.max_image_bytes
        store = open_store(config.storage)
        self.files = FileStore(store, max_bytes=config.files.max_file_bytes,
                               purposes=config.files.purposes)
        self.batches = BatchStore(store)
        self._created = now()

    def create_batch(self, key_id: str | None, body: BatchCreateRequest) -> dict[str, Any]:
        if body.endpoint != BATCH_ENDPOINT:
            raise InvalidRequestError(f"endpoint must be {BATCH_ENDPOINT}", param="endpoint")
        if body.completion_window != "24h":
            raise InvalidRequestError("completion_window must be '24h'",
                                      param="completion_window")
        try:
            input_file = self.files.get(key_id, body.input_file_id)
        except NotFoundError:
            raise InvalidRequestError(f"input_file_id {body.input_file_id!r} is not one of your "
                                      "files", param="input_file_id") from None
        if input_file.purpose != "batch":
            raise InvalidRequestError("the input file must have purpose 'batch'",
                                      param="input_file_id")
        self._check_batch_quota(key_id, input_file.bytes)
        batch = new_batch(caller_id(key_id), input_file_id=body.input_file_id,
                          endpoint=body.endpoint, completion_window=body.completion_window,
                          metadata=body.metadata, window_s=24 * 3600)
        self.batches.create(batch)
        return public(batch)

    def _check_batch_quota(self, key_id: str | None, new_bytes: int) -> None:
        """Active batches and their input bytes per key (a soft quota: two creates racing
        can both pass; the next one sees them)."""
        limits = self._config.limits.for_key(key_id)
        if limits.max_active_batches is None and limits.max_active_batch_bytes is None:
            return
        owner = caller_id(key_id)
        mine = [batch_id for who, batch_id in self.batches.active() if who == owner]
        key = caller_id(key_id)
        if limits.max_active_batches is not None and len(mine) >= limits.max_active_batches:
            self.metrics.rate_limited.inc(tags={"key": key, "limit": "batches"})
            raise RateLimitError(
                f"Batch quota reached for key {key!r}: {len(mine)} active batches, limit "
                f"{limits.max_active_batches}. Wait for one to finish or cancel one.",
                limit="batches", code="batch_quota_exceeded", retry_after_s=60)
        if limits.max_active_batch_bytes is not None:
            active_bytes = 0
            for batch_id in mine:
                try:
                    batch = self.batches.load(owner, batch_id)
                    active_bytes += self.files.get(key_id, batch["input_file_id"]).bytes
                except NotFoundError:
                    continue
            if active_bytes + new_bytes > limits.max_active_batch_bytes:
                self.metrics.rate_limited.inc(tags={"key": key, "limit": "batches"})
                raise RateLimitError(
                    f"Batch quota reached for key {key!r}: active batches hold "
                    f"{describe_size(active_bytes)} of input and this one "
                    f"{describe_size(new_bytes)}, over the "
                    f"{describe_size(limits.max_active_batch_bytes)} limit. Wait for a batch "
                    "to finish.", limit="batches", code="batch_quota_exceeded",
                    retry_after_s=60)

    def cancel_batch(self, key_id: str | None, batch_id: str) -> dict[str, Any]:
        batch = self.batches.load(caller_id(key_id), batch_id)
        if batch["status"] in TERMINAL:
            raise InvalidRequestError(f"batch {batch_id} is already {batch['status']}; only "
                                      "validating or in-progress batches can be cancelled",
                                      code="batch_not_cancellable")
        self.batches.request_cancel(batch)
        return self.batches.view(batch)

    def authenticate(self, request: Request) -> str | None:
        key_id = self._auth.authenticate(request.headers.get("authorization"))
        scope = current_scope()
        if scope is not None:
            scope.authenticated_as(key_id)
        return key_id

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

    def _validate(self, chat: ChatCompletionRequest, key_id: str | None) -> list[str]:
        self.model(chat.model)
        resolve_reasoning_options(self._config.reasoning, chat, key_id)  # 400 before dispatch
        return request_image_urls(chat.image_urls(),
                                  max_images=self._config.image.max_images_per_request,
                                  allowed_buckets=self._config.storage.allowed_source_buckets)

    def _dispatch(self, chat: ChatCompletionRequest, key_id: str | None, method: str,
                  urls: list[str]):
        if urls:
            self.metrics.images.inc(len(urls), tags={"key": caller_id(key_id)})
        request = GenerationRequest(request_id=new_completion_id(),
                                    chat=chat.without_image_data() if urls else chat,
                                    key_id=key_id)
        images: Any = self.pre.prepare.remote(urls) if urls else []
        gen = self._gen
        if method == "stream":
            gen = gen.options(stream=True)
        return request, getattr(gen, method).remote(request, images)

    async def _first_answer(self, chat: ChatCompletionRequest, key_id: str | None, method: str,
                            urls: list[str]) -> tuple[GenerationRequest, Any, GenerationEvent]:
        """Dispatch and wait for the first thing the generator sends: the whole completion, or
        a stream's acceptance. A replica that died before sending it is no fault of the request,
        so it is sent again (``server.replica_failure_retries`` times; Serve routes it to a
        healthy or replacement replica)."""
        attempt = 0
        while True:
            request, call = self._dispatch(chat, key_id, method, urls)
            try:
                first = await (call.__anext__() if method == "stream" else call)
                return request, call, first
            except BaseException as exc:
                if method == "stream":
                    call.cancel()
                if attempt == self._retries or not isinstance(exc, Exception) \
                        or not replica_died(exc):
                    raise
                attempt += 1
                logger.warning("%s: a replica died (%s); sending the request again "
                               "(attempt %d)", request.request_id, type(unwrap(exc)).__name__,
                               attempt + 1)
                await asyncio.sleep(0.5 * attempt)

    async def complete(self, chat: ChatCompletionRequest,
                       key_id: str | None) -> tuple[ChatCompletion, GenerationEvent]:
        urls = self._validate(chat, key_id)
        ticket = await self.gate.enter(chat, key_id)
        final: GenerationEvent | None = None
        try:
            request, _, final = await self._first_answer(chat, key_id, "complete", urls)
        finally:
            self.gate.leave(ticket, final)
        return completion_response(request.request_id, request.created, chat.model, final), final

    async def open_stream(self, chat: ChatCompletionRequest,
                          key_id: str | None) -> tuple[AsyncIterator[bytes], GenerationEvent]:
        """Start generation and wait for acceptance; errors before that raise (HTTP status)."""
        urls = self._validate(chat, key_id)
        ticket = await self.gate.enter(chat, key_id)
        try:
            request, stream, accepted = await self._first_answer(chat, key_id, "stream", urls)
        except BaseException:
            self.gate.leave(ticket, None)
            raise
        return self._sse(request, chat, stream, accepted, ticket, current_scope()), accepted

    async def _sse(self, request: GenerationRequest, chat: ChatCompletionRequest, stream: Any,
                   accepted: GenerationEvent, ticket: Ticket,
                   scope: RequestScope | None) -> AsyncIterator[bytes]:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)

        def chunk(delta: Delta, final: GenerationEvent | None = None,
                  usage: Usage | None = None, choices: bool = True) -> bytes:
            choice = ChunkChoice(delta=delta)
            if final is not None:
                choice = ChunkChoice(delta=delta, finish_reason=final.finish_reason,
                                     stop_reason=final.stop_reason, qvq=final.report())
            body = ChatCompletionChunk(
                id=request.request_id, created=request.created, model=chat.model,
                choices=[choice] if choices else [], usage=usage)
            return b"data: " + body.model_dump_json(exclude_none=not usage).encode() + b"\n\n"

        final = None
        first_text = True
        try:
            yield chunk(Delta(role="assistant", content=""))
            async for event in stream:
                if event.text or event.reasoning:
                    if first_text and scope is not None:
                        first_text = False
                        self.metrics.stream_ttft.observe(time.monotonic() - scope.started)
                    yield chunk(Delta(content=event.text or None,
                                      reasoning_content=event.reasoning or None))
                if event.kind == "final":
                    final = event
            if final is None:
                raise ServiceUnavailableError("generation ended without a result; retry")
            yield chunk(Delta(), final=final)
            if include_usage:
                yield chunk(Delta(), usage=usage_of(final), choices=False)
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
            self.gate.leave(ticket, final)
            if scope is not None:
                self.metrics.latency.observe(time.monotonic() - scope.started,
                                             tags={"route": scope.route})
        yield b"data: [DONE]\n\n"

    async def health(self) -> dict[str, str]:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await asyncio.gather(self._gen.probe.remote(), self.pre.ping.remote())
        except Exception as exc:  # noqa: BLE001
            logger.warning("health probe failed: %r", exc)
            raise ServiceUnavailableError("engine or preprocessor is not healthy",
                                          code="unhealthy") from None
        return {"status": "ok"}


def _image_headers(event: GenerationEvent) -> dict[str, str]:
    """``x-qvq-image-cache: miss,memory``: per image, where its pixels came from."""
    return {"x-qvq-image-cache": ",".join(event.image_cache)} if event.image_cache else {}


UPLOAD_TYPES = ("image/", "application/octet-stream")


async def read_capped_body(request: Request, cap: int, limit_text: str) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(f"upload is {describe_size(int(declared))}, over the "
                                   f"{limit_text}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise PayloadTooLargeError(f"upload is over the {limit_text}")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, cap: int) -> bytes:
    """A JSON body, refused with 413 before parsing when it is over ``cap`` bytes."""
    return await read_capped_body(
        request, cap, f"{describe_size(cap)} request body limit (server.max_request_body_bytes); "
        "send large images by URL or upload them first (POST /v1/images)")


async def multipart_form(request: Request, body: bytes):
    request._body = body  # starlette parses the form from the cached body
    try:
        return await request.form()
    except Exception:  # noqa: BLE001 - malformed multipart from the client
        raise InvalidRequestError("malformed multipart form data") from None


async def form_file(form, field: str = "file") -> tuple[bytes, str]:
    upload = form.get(field)
    if upload is None or isinstance(upload, str):
        raise InvalidRequestError(f"multipart upload needs a '{field}' field holding the "
                                  "file", param=field)
    return await upload.read(), upload.filename or "upload"


async def read_image_upload(request: Request, max_bytes: int) -> bytes:
    """Image bytes of a raw (image/*) or multipart (field ``file``) upload, capped while read."""
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data")
    if not multipart and not content_type.startswith(UPLOAD_TYPES):
        raise InvalidRequestError("send the image as the raw body with an image/* (or "
                                  "application/octet-stream) Content-Type, or as multipart "
                                  "form data with a 'file' field", param="content-type")
    body = await read_capped_body(
        request, max_bytes + (64 * 1024 if multipart else 0),
        f"{describe_size(max_bytes)} limit; use a presigned upload (POST /v1/images/uploads) "
        "for large files")
    if multipart:
        body, _ = await form_file(await multipart_form(request, body))
    if not body:
        raise ImageError("upload is empty")
    return body


async def upload_content_type(request: Request) -> str:
    raw = await request.body()
    if not raw:
        return "application/octet-stream"
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidRequestError("request body is not valid JSON") from None
    if not isinstance(body, dict) or set(body) - {"content_type"}:
        raise InvalidRequestError("body may only hold {\"content_type\": \"image/...\"}")
    content_type = body.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str) or not content_type.startswith(UPLOAD_TYPES):
        raise InvalidRequestError("content_type must be image/* or application/octet-stream",
                                  param="content_type")
    return content_type


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def openai_errors(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Every route answers errors through the one mapping (error_response), never a trace.

    It also opens the request's :class:`RequestScope`: the rate-limit headers the route
    collected go on the response, error or not, and the router's metrics count it (a stream's
    latency is recorded when the stream ends).
    """
    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        scope, token = open_scope(route.__name__)
        try:
            try:
                response = await route(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the one error mapping
                response = error_response(exc)
            # Serve's class-based FastAPI views pass the replica as keyword ``self``
            owner = args[0] if args else kwargs.get("self")
            frontend = getattr(owner, "frontend", None)
            if isinstance(frontend, ChatFrontend):
                if not scope.headers:  # not charged by admission: look the key's limits up
                    scope.headers.update(await frontend.gate.headers_for(scope))
                response.headers.update(scope.headers)
                metrics = frontend.metrics
                metrics.requests.inc(tags={"route": scope.route,
                                           "status": str(response.status_code),
                                           "key": scope.key})
                if not isinstance(response, StreamingResponse):
                    metrics.latency.observe(time.monotonic() - scope.started,
                                            tags={"route": scope.route})
            return response
        finally:
            close_scope(token)
    return wrapper


def build_api(model_ids: list[str] | None = None) -> FastAPI:
    api = FastAPI(title="qvq-serving", version="0.1.0",
                  description="OpenAI-compatible API for QVQ-72B-Preview")
    install_error_handlers(api)
    install_openapi(api, model_ids)
    return api


def router_deployment(config: ServingConfig) -> serve.Deployment:
    api = build_api(list(config.model.model_ids))

    @serve.ingress(api)
    class Router:
        def __init__(self, config: ServingConfig, preprocessor: DeploymentHandle,
                     generator: DeploymentHandle, runner: DeploymentHandle,
                     limiter: DeploymentHandle | None = None):
            route_to_serve_logs()
            self.frontend = ChatFrontend(config, preprocessor, generator, limiter)
            self.runner = runner

        @api.post("/v1/chat/completions")
        @openai_errors
        async def chat_completions(self, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            self.frontend.gate.refuse_if_full()
            chat = parse_chat_request(await read_json_body(request, self.frontend.max_body_bytes))
            if chat.stream:
                body, accepted = await self.frontend.open_stream(chat, key_id)
                return StreamingResponse(body, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache",
                                                  **_image_headers(accepted)})
            completion, final = await self.frontend.complete(chat, key_id)
            response = _json(completion)
            response.headers.update(_image_headers(final))
            return response

        @api.post("/v1/images")
        @openai_errors
        async def upload_image(self, request: Request) -> Response:
            self.frontend.authenticate(request)
            data = await read_image_upload(request, self.frontend.max_image_bytes)
            return JSONResponse(await self.frontend.pre.upload.remote(data))

        @api.post("/v1/images/uploads")
        @openai_errors
        async def create_image_upload(self, request: Request) -> Response:
            self.frontend.authenticate(request)
            content_type = await upload_content_type(request)
            return JSONResponse(await self.frontend.pre.create_upload.remote(content_type))

        @api.post("/v1/images/uploads/{upload_id}/complete")
        @openai_errors
        async def complete_image_upload(self, upload_id: str, request: Request) -> Response:
            self.frontend.authenticate(request)
            return JSONResponse(await self.frontend.pre.complete_upload.remote(upload_id))

        @api.get("/v1/images/{image_id}")
        @openai_errors
        async def get_image(self, image_id: str, request: Request) -> Response:
            self.frontend.authenticate(request)
            return JSONResponse(await self.frontend.pre.describe.remote(image_id))

        @api.post("/v1/files")
        @openai_errors
        async def create_file(self, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            files = self.frontend.files
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise InvalidRequestError("upload files as multipart form data with 'file' "
                                          "and 'purpose' fields", param="content-type")
            body = await read_capped_body(request, files.max_bytes + 64 * 1024,
                                          f"{describe_size(files.max_bytes)} file limit")
            form = await multipart_form(request, body)
            data, filename = await form_file(form)
            if len(data) > files.max_bytes:
                raise PayloadTooLargeError(f"file is over the {describe_size(files.max_bytes)} "
                                           "limit")
            purpose = form.get("purpose")
            if not isinstance(purpose, str) or not purpose:
                raise InvalidRequestError("missing required field 'purpose'", param="purpose")
            created = await asyncio.to_thread(files.create, key_id, data, filename=filename,
                                              purpose=purpose)
            return JSONResponse(created.to_dict())

        @api.get("/v1/files")
        @openai_errors
        async def list_files(self, request: Request, purpose: str | None = None,
                             limit: int = 10000, after: str | None = None,
                             order: str = "desc") -> Response:
            key_id = self.frontend.authenticate(request)
            return JSONResponse(await asyncio.to_thread(
                self.frontend.files.list, key_id, purpose=purpose, limit=limit, after=after,
                order=order))

        @api.get("/v1/files/{file_id}")
        @openai_errors
        async def get_file(self, file_id: str, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            found = await asyncio.to_thread(self.frontend.files.get, key_id, file_id)
            return JSONResponse(found.to_dict())

        @api.get("/v1/files/{file_id}/content")
        @openai_errors
        async def file_content(self, file_id: str, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            data = await asyncio.to_thread(self.frontend.files.content, key_id, file_id)
            return Response(data, media_type="application/octet-stream")

        @api.delete("/v1/files/{file_id}")
        @openai_errors
        async def delete_file(self, file_id: str, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            return JSONResponse(await asyncio.to_thread(self.frontend.files.delete, key_id,
                                                        file_id))

        @api.post("/v1/batches")
        @openai_errors
        async def create_batch(self, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            try:
                body = BatchCreateRequest.model_validate_json(
                    await read_json_body(request, self.frontend.max_body_bytes))
            except ValidationError as exc:
                raise validation_to_error(exc) from None
            batch = await asyncio.to_thread(self.frontend.create_batch, key_id, body)
            await self.runner.kick.remote()
            return JSONResponse(batch)

        @api.get("/v1/batches")
        @openai_errors
        async def list_batches(self, request: Request, limit: int = 20,
                               after: str | None = None) -> Response:
            key_id = self.frontend.authenticate(request)
            return JSONResponse(await asyncio.to_thread(
                self.frontend.batches.list, caller_id(key_id), limit=limit, after=after))

        @api.get("/v1/batches/{batch_id}")
        @openai_errors
        async def get_batch(self, batch_id: str, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            batches = self.frontend.batches
            batch = await asyncio.to_thread(batches.load, caller_id(key_id), batch_id)
            return JSONResponse(await asyncio.to_thread(batches.view, batch))

        @api.post("/v1/batches/{batch_id}/cancel")
        @openai_errors
        async def cancel_batch(self, batch_id: str, request: Request) -> Response:
            key_id = self.frontend.authenticate(request)
            view = await asyncio.to_thread(self.frontend.cancel_batch, key_id, batch_id)
            await self.runner.kick.remote()
            return JSONResponse(view)

        @api.get("/v1/models")
        @openai_errors
        async def list_models(self, request: Request) -> Response:
            self.frontend.authenticate(request)
            return _json(self.frontend.models())

        @api.get("/v1/models/{model_id:path}")
        @openai_errors
        async def get_model(self, model_id: str, request: Request) -> Response:
            self.frontend.authenticate(request)
            return _json(self.frontend.model(model_id))

        @api.get("/health")
        @openai_errors
        async def health(self) -> Response:
            return JSONResponse(await self.frontend.health())

    dep = config.deployments.router
    return serve.deployment(
        Router, name="Router",
        ray_actor_options=dep.actor_options(),
        max_ongoing_requests=dep.max_ongoing_requests,
        max_queued_requests=dep.max_queued_requests,
        autoscaling_config=dep.autoscaling.to_serve(),
        logging_config={"enable_access_log": dep.access_log is not False,
                        "encoding": config.server.log_encoding},
    )

