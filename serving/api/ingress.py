"""The FastAPI apps of the ingress deployments, built inside each replica around its services:

- :func:`build_router_app`: the router's, every resource (:mod:`serving.api.routes`) and
  ``/openapi.json``;
- :func:`build_chat_app`: the generator's when it serves chat itself (``chat_entry:
  generator``), ``/completions`` under the chat application's ``/v1/chat`` prefix.

Both have one error mapping and :class:`~serving.api.middleware.ApiMiddleware` around them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI

from serving.api.chat import ChatEndpoint, Generation, RemoteGeneration
from serving.api.errors import install_error_handlers
from serving.api.middleware import ApiMiddleware
from serving.api.openapi import install_openapi
from serving.api.routes import batches, chat, files, health, images, models
from serving.api.services import ApiServices
from serving.batch.service import BatchService
from serving.batch.store import BatchStore
from serving.config import ServingConfig
from serving.storage.factory import open_store
from serving.storage.files import FileStore


def _app(services: ApiServices, routers: Iterable[APIRouter], *, docs: bool) -> FastAPI:
    if docs:
        api = FastAPI(title="qvq-serving", version="0.1.0",
                      description="OpenAI-compatible API for QVQ-72B-Preview")
    else:
        api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(api)
    for router in routers:
        api.include_router(router)
    api.add_middleware(ApiMiddleware)
    api.state.services = services
    if docs:
        install_openapi(api, list(services.config.model.model_ids))
    return api


def build_router_app(config: ServingConfig, *, preprocessor: Any, generator: Any,
                     batch_runner: Any, limiter: Any | None = None) -> FastAPI:
    """The router's app; handles of the deployments it calls."""
    endpoint = ChatEndpoint(config, RemoteGeneration(
        generator, preprocessor, config.server.replica_failure_retries), limiter)
    store = open_store(config.storage)
    file_store = FileStore(store, max_bytes=config.files.max_file_bytes,
                           purposes=config.files.purposes)
    services = ApiServices(
        config=config, chat=endpoint, images=preprocessor, files=file_store,
        batches=BatchService(config, BatchStore(store), file_store, endpoint.metrics),
        batch_runner=batch_runner, models=models.ModelCatalog(config))
    return _app(services, [chat.routes(), images.routes(), files.routes(), batches.routes(),
                           models.routes(), health.routes()], docs=True)


def build_chat_app(config: ServingConfig, generation: Generation,
                   limiter: Any | None = None) -> FastAPI:
    """The generator's chat app (its OpenAPI document is the router's, which lists chat)."""
    endpoint = ChatEndpoint(config, generation, limiter)
    return _app(ApiServices(config=config, chat=endpoint),
                [chat.routes("/completions")], docs=False)
