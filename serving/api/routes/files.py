"""``/v1/files``: OpenAI's Files API (batch input and output), in the object store per caller."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.api.http import form_file, multipart_form, read_capped_body
from serving.api.openapi import request_body
from serving.api.services import services
from serving.errors import InvalidRequestError, PayloadTooLargeError
from serving.preprocess.sources import describe_size

MULTIPART_SLACK = 64 * 1024  # the form's boundaries and fields around the file
CREATE_BODY = request_body({"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"},
                   "purpose": {"type": "string", "enum": ["batch"]}}}}})


def routes() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/files", openapi_extra=CREATE_BODY)
    async def create_file(request: Request) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        files = api.files
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequestError("upload files as multipart form data with 'file' "
                                      "and 'purpose' fields", param="content-type")
        body = await read_capped_body(request, files.max_bytes + MULTIPART_SLACK,
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

    @router.get("/v1/files")
    async def list_files(request: Request, purpose: str | None = None, limit: int = 10000,
                         after: str | None = None, order: str = "desc") -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        return JSONResponse(await asyncio.to_thread(
            api.files.list, key_id, purpose=purpose, limit=limit, after=after, order=order))

    @router.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        found = await asyncio.to_thread(api.files.get, key_id, file_id)
        return JSONResponse(found.to_dict())

    @router.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        data = await asyncio.to_thread(api.files.content, key_id, file_id)
        return Response(data, media_type="application/octet-stream")

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> Response:
        api = services(request)
        key_id = api.chat.authenticate(request)
        return JSONResponse(await asyncio.to_thread(api.files.delete, key_id, file_id))

    return router
