"""What the routes of an ingress app call: one :class:`ApiServices` per replica, held in the
app's ``state`` (``request.app.state.services``), built by the deployment that serves it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

if TYPE_CHECKING:
    from serving.api.chat import ChatEndpoint
    from serving.api.routes.models import ModelCatalog
    from serving.batch.service import BatchService
    from serving.config import ServingConfig
    from serving.storage.files import FileStore


@dataclass
class ApiServices:
    """``chat`` is always there: it answers chat completions and holds the admission gate and
    the API metrics every route reports to. The others exist where their routes are served
    (the router); the generator's chat app has chat alone."""

    config: ServingConfig
    chat: ChatEndpoint
    images: Any | None = None  # the ImagePreprocessor deployment's handle
    files: FileStore | None = None
    batches: BatchService | None = None
    batch_runner: Any | None = None  # the BatchRunner deployment's handle (kicked on changes)
    models: ModelCatalog | None = None


def services(request: Request) -> ApiServices:
    return request.app.state.services
