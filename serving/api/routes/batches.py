"""``/v1/batches``: OpenAI's Batch API over files uploaded to ``/v1/files``; the rules are
:class:`serving.batch.service.BatchService`'s, the work the BatchRunner's."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from serving.api.errors import validation_to_error
from serving.api.http import read_json_body
from serving.api.openapi import json_body
from serving.api.services import services
from serving.protocol import BatchCreateRequest


def routes() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/batches", openapi_extra=json_body(BatchCreateRequest))
    async def create_batch(request: Request) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        try:
            body = BatchCreateRequest.model_validate_json(
                await read_json_body(request, api.config.server.max_request_body_bytes))
        except ValidationError as exc:
            raise validation_to_error(exc) from None
        batch = await asyncio.to_thread(api.batches.create, key_id, body)
        await api.batch_runner.kick.remote()
        return JSONResponse(batch)

    @router.get("/v1/batches")
    async def list_batches(request: Request, limit: int = 20,
                           after: str | None = None) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        return JSONResponse(await asyncio.to_thread(api.batches.list, key_id, limit=limit,
                                                    after=after))

    @router.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, request: Request) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        return JSONResponse(await asyncio.to_thread(api.batches.get, key_id, batch_id))

    @router.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, request: Request) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        view = await asyncio.to_thread(api.batches.cancel, key_id, batch_id)
        await api.batch_runner.kick.remote()
        return JSONResponse(view)

    return router
