"""Router: the OpenAI-compatible HTTP surface on CPU nodes: files, batches, images, models,
health, and chat completions when ``server.chat_entry`` is ``router``.

With the default ``chat_entry: generator`` the generator replicas serve
``/v1/chat/completions`` themselves (a Serve application at ``/v1/chat``, see
:mod:`serving.api.chat`), and HTTP requests for that route never reach this deployment. The
route stays here for the other placement, and so that ``/openapi.json`` describes it.

Hops are kept to the minimum: a request with images sends the URLs to the ImagePreprocessor
and passes its *pending* response straight into the generator call, so pixels flow
preprocessor -> generator through Ray's object store without ever visiting the router.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.api.auth import caller_id
from serving.api.chat import ChatEndpoint, RemoteGeneration
from serving.api.errors import validation_to_error
from serving.api.http import (
    build_api,
    form_file,
    json_response,
    multipart_form,
    openai_errors,
    read_capped_body,
    read_image_upload,
    read_json_body,
    upload_content_type,
)
from serving.batch.store import TERMINAL, BatchStore, new_batch, public
from serving.batch.validate import ENDPOINT as BATCH_ENDPOINT
from serving.config import ServingConfig
from serving.errors import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
)
from serving.logs import route_to_serve_logs
from serving.preprocess.sources import describe_size
from serving.protocol import BatchCreateRequest, ModelCard, ModelList, now
from serving.roles import ROUTER, generator_handle
from serving.storage.factory import open_store
from serving.storage.files import FileStore


class ChatFrontend:
    """Request handling of the router's routes, independent of FastAPI routing (unit-testable
    with fake handles). ``chat`` answers chat completions through the generator replicas; its
    admission gate and metrics serve every route (rate-limit headers, request counts)."""

    def __init__(self, config: ServingConfig, preprocessor: Any, generator: Any,
                 limiter: Any | None = None):
        self._config = config
        self.pre = preprocessor
        self.chat = ChatEndpoint(config, RemoteGeneration(
            generator, preprocessor, config.server.replica_failure_retries), limiter)
        self.gate, self.metrics = self.chat.gate, self.chat.metrics
        self.max_body_bytes = config.server.max_request_body_bytes
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
        return self.chat.authenticate(request)

    def models(self) -> ModelList:
        cfg = self._config.model
        return ModelList(data=[ModelCard(id=m, created=self._created, root=cfg.path,
                                         max_model_len=cfg.max_model_len)
                               for m in cfg.model_ids])

    def model(self, model_id: str) -> ModelCard:
        self.chat.check_model(model_id)
        cfg = self._config.model
        return ModelCard(id=model_id, created=self._created, root=cfg.path,
                         max_model_len=cfg.max_model_len)


def router_deployment(config: ServingConfig) -> serve.Deployment:
    api = build_api(list(config.model.model_ids))

    @serve.ingress(api)
    class Router:
        def __init__(self, config: ServingConfig, preprocessor: DeploymentHandle,
                     generator: DeploymentHandle | None, runner: DeploymentHandle,
                     limiter: DeploymentHandle | None = None):
            route_to_serve_logs()
            # None: the generator is the ingress of its own application (chat_entry:
            # generator), reached by name
            generator = generator or generator_handle(config)
            self.frontend = ChatFrontend(config, preprocessor, generator, limiter)
            self.chat = self.frontend.chat
            self.runner = runner

        @api.post("/v1/chat/completions")
        @openai_errors
        async def chat_completions(self, request: Request) -> Response:
            return await self.chat.answer(request)

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
            return json_response(self.frontend.models())

        @api.get("/v1/models/{model_id:path}")
        @openai_errors
        async def get_model(self, model_id: str, request: Request) -> Response:
            self.frontend.authenticate(request)
            return json_response(self.frontend.model(model_id))

        @api.get("/health")
        @openai_errors
        async def health(self) -> Response:
            return JSONResponse(await self.chat.health())

    dep = config.deployments.router
    return serve.deployment(
        Router, name=ROUTER,
        ray_actor_options=dep.actor_options(),
        max_ongoing_requests=dep.max_ongoing_requests,
        max_queued_requests=dep.max_queued_requests,
        autoscaling_config=dep.autoscaling.to_serve(),
        logging_config={"enable_access_log": dep.access_log is not False,
                        "encoding": config.server.log_encoding},
    )

