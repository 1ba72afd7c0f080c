"""``GET /health``: 200 when the replica and what it calls answer, else 503 (the error names
what is down)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.api.services import services


def routes() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> Response:
        return JSONResponse(await services(request).chat.health())

    return router
