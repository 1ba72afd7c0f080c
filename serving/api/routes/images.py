"""``/v1/images``: upload an image once and refer to it by id (``qvq-image://<id>``) in any
number of requests, directly or through a presigned upload; answered by the preprocessor."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.api.http import read_image_upload, upload_content_type
from serving.api.openapi import request_body
from serving.api.services import services

_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = request_body({
    "image/png": _BINARY, "image/jpeg": _BINARY, "application/octet-stream": _BINARY,
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}}}}})
PRESIGNED_UPLOAD_BODY = request_body({"application/json": {"schema": {
    "type": "object", "additionalProperties": False,
    "properties": {"content_type": {"type": "string"}}}}}, required=False)


def routes() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/images", openapi_extra=UPLOAD_BODY)
    async def upload_image(request: Request) -> Response:
        api = services(request)
        api.chat.authenticate(request)
        data = await read_image_upload(request, api.config.image.max_image_bytes)
        return JSONResponse(await api.images.upload.remote(data))

    @router.post("/v1/images/uploads", openapi_extra=PRESIGNED_UPLOAD_BODY)
    async def create_image_upload(request: Request) -> Response:
        api = services(request)
        api.chat.authenticate(request)
        content_type = await upload_content_type(request)
        return JSONResponse(await api.images.create_upload.remote(content_type))

    @router.post("/v1/images/uploads/{upload_id}/complete")
    async def complete_image_upload(upload_id: str, request: Request) -> Response:
        api = services(request)
        api.chat.authenticate(request)
        return JSONResponse(await api.images.complete_upload.remote(upload_id))

    @router.get("/v1/images/{image_id}")
    async def get_image(image_id: str, request: Request) -> Response:
        api = services(request)
        api.chat.authenticate(request)
        return JSONResponse(await api.images.describe.remote(image_id))

    return router
