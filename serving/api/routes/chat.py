"""``POST /v1/chat/completions``: served by the router or, under ``/v1/chat``, by the generator
replicas themselves (``server.chat_entry``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.openapi import json_body
from serving.api.services import services
from serving.protocol import ChatCompletionRequest

PATH = "/v1/chat/completions"


def routes(path: str = PATH) -> APIRouter:
    """``path``: the route inside its app (``/completions`` in the chat app at ``/v1/chat``)."""
    router = APIRouter()

    @router.post(path, openapi_extra=json_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await services(request).chat.answer(request)

    return router
