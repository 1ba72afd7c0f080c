"""HTTP plumbing the routes share (:mod:`serving.api.routes`): bounded body readers (a body is
refused with 413 as soon as it is known to be over its limit, before any parsing), uploads,
JSON responses of pydantic models."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from serving.errors import ImageError, InvalidRequestError, PayloadTooLargeError
from serving.messages import Completion, GenerationEvent
from serving.preprocess.sources import describe_size


def image_headers(event: GenerationEvent | Completion) -> dict[str, str]:
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
    """The form of a multipart body already read (and size-capped) from ``request``: Starlette
    parses it from a request that replays those bytes."""
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, receive=replay).form()
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


def json_response(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")
