"""HTTP plumbing shared by the ingress deployments (the router, and the generator when it
serves chat itself): bounded body readers, the route wrapper that maps every error to one
OpenAI-style answer and keeps per-request scope, metrics and rate-limit headers, and the
FastAPI app with our error handlers and OpenAPI document."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from serving.api.admission import Gatekeeper, close_scope, open_scope
from serving.api.errors import error_response, install_error_handlers
from serving.api.openapi import install_openapi
from serving.errors import ImageError, InvalidRequestError, PayloadTooLargeError
from serving.preprocess.sources import describe_size
from serving.protocol import GenerationEvent


def image_headers(event: GenerationEvent) -> dict[str, str]:
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
    request._body = body  # starlette parses the form from the cached body
    try:
        return await request.form()
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


def openai_errors(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Every route answers errors through the one mapping (error_response), never a trace.

    It also opens the request's :class:`RequestScope`: the rate-limit headers the route
    collected go on the response, error or not, and the router's metrics count it (a stream's
    latency is recorded when the stream ends).
    """
    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        scope, token = open_scope(route.__name__)
        try:
            try:
                response = await route(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the one error mapping
                response = error_response(exc)
            # Serve's class-based FastAPI views pass the replica as keyword ``self``; its
            # ``chat`` endpoint holds the admission gate and the API metrics
            owner = args[0] if args else kwargs.get("self")
            gate = getattr(getattr(owner, "chat", None), "gate", None)
            if isinstance(gate, Gatekeeper):
                if not scope.headers:  # not charged by admission: look the key's limits up
                    scope.headers.update(await gate.headers_for(scope))
                response.headers.update(scope.headers)
                metrics = owner.chat.metrics
                metrics.requests.inc(tags={"route": scope.route,
                                           "status": str(response.status_code),
                                           "key": scope.key})
                if not isinstance(response, StreamingResponse):
                    metrics.latency.observe(time.monotonic() - scope.started,
                                            tags={"route": scope.route})
            return response
        finally:
            close_scope(token)
    return wrapper


def build_api(model_ids: list[str] | None = None, *, docs: bool = True) -> FastAPI:
    """Our FastAPI app: errors through the one mapping; with ``docs``, ``/openapi.json`` with
    the request bodies the routes really take (the chat app at ``/v1/chat`` has none: the
    router's document describes every route, chat included)."""
    if not docs:
        api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        install_error_handlers(api)
        return api
    api = FastAPI(title="qvq-serving", version="0.1.0",
                  description="OpenAI-compatible API for QVQ-72B-Preview")
    install_error_handlers(api)
    install_openapi(api, model_ids)
    return api
