"""``/v1/models``: the served model names (``model.served_name`` and its aliases)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.http import json_response
from serving.api.services import services
from serving.api.validation import check_model
from serving.config import ServingConfig
from serving.protocol import ModelCard, ModelList, now


class ModelCatalog:
    def __init__(self, config: ServingConfig):
        self._config = config
        self._created = now()

    def _card(self, model_id: str) -> ModelCard:
        model = self._config.model
        return ModelCard(id=model_id, created=self._created, root=model.path,
                         max_model_len=model.max_model_len)

    def list(self) -> ModelList:
        return ModelList(data=[self._card(m) for m in self._config.model.model_ids])

    def get(self, model_id: str) -> ModelCard:
        check_model(self._config, model_id)
        return self._card(model_id)


def routes() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models(request: Request) -> Response:
        api = services(request)
        api.chat.authenticate(request)
        return json_response(api.models.list())

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        api = services(request)
        api.chat.authenticate(request)
        return json_response(api.models.get(model_id))

    return router
