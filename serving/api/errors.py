"""The one place exceptions become OpenAI-style HTTP error responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api.admission import current_scope
from serving.errors import (
    APIError,
    InvalidRequestError,
    NotFoundError,
    QVQError,
    elide,
    to_api_error,
)
from serving.protocol import VLLM_FIELDS_NOT_ACCEPTED

logger = logging.getLogger("qvq.errors")


# Names pydantic inserts into error locations for unions and tagged unions; not request fields.
_UNION_TAGS = {"system", "user", "assistant", "text", "image_url", "str",
               "list[tagged-union[TextPart,ImagePart]]", "list[TextPart]"}


# Client input echoed in a message (unknown key names, unsupported roles and part types) is cut
# in the middle to these lengths, so a huge value cannot make a huge error body.
_MAX_PARAM_CHARS = 120
_MAX_DETAIL_CHARS = 600


def _param_path(loc: tuple) -> str | None:
    """``('messages', 0, 'user', 'content', 1, 'type')`` -> ``messages[0].content[1].type``."""
    out = ""
    for i, part in enumerate(loc):
        if part == "body" and i == 0:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS and (i == 0 or not isinstance(loc[i - 1], str)
                                      or loc[i - 1] in ("content",)):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or None


def _deepest_union_member(errors: list) -> dict:
    """The first error, unless it only says the value is not one union member while another
    member's error under the same field goes deeper: a content list with a bad image_url
    fails as ``content.str`` ("not a valid string") first, and the list member's error is the
    one that names the field to fix (``messages[0].content[1].image_url.max_pixels``)."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if not loc or loc[-1] not in _UNION_TAGS:
        return first
    field = loc[:-1]
    for err in errors[1:]:
        other = tuple(err.get("loc", ()))
        if other[:len(field)] == field and len(other) > len(loc):
            return err
    return first


def validation_to_error(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """Turn the first schema problem into a 400 that names the field and what to fix."""
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("request body does not match the schema")
    err = _deepest_union_member(errors)
    param = _param_path(tuple(err.get("loc", ())))
    param = elide(param, _MAX_PARAM_CHARS) if param else param
    kind = err.get("type", "")
    if kind == "json_invalid":
        detail = err.get("ctx", {}).get("error", err["msg"])
        return InvalidRequestError(f"request body is not valid JSON: {detail}")
    if kind == "extra_forbidden":
        if param in VLLM_FIELDS_NOT_ACCEPTED:
            return InvalidRequestError(f"parameter {param!r} (a vLLM server option) is not "
                                       "supported by this server; remove it", param=param)
        return InvalidRequestError(f"unknown parameter {param!r}; remove it", param=param)
    if kind == "missing":
        return InvalidRequestError(f"missing required parameter {param!r}", param=param)
    msg = elide(str(err.get("msg", "invalid value")).removeprefix("Value error, "),
                 _MAX_DETAIL_CHARS)
    where = f"{param}: " if param else ""
    return InvalidRequestError(f"invalid request: {where}{msg}", param=param)


def error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, ValidationError | RequestValidationError):
        api_exc: QVQError = validation_to_error(exc)
    else:
        api_exc = to_api_error(exc)
    body = api_exc.to_openai()
    error = body["error"]
    code = error.get("code") or error["type"]
    if not isinstance(api_exc, APIError):
        logger.exception("unhandled error", exc_info=exc)
    elif api_exc.status_code < 500:
        # the access log shows only the status; this says what the client must fix (JSON
        # logs carry the request id of the access log line)
        logger.info("%d %s%s: %s", api_exc.status_code, code,
                    f" (param {error['param']})" if error.get("param") else "",
                    elide(api_exc.message, 300))
    scope = current_scope()
    if scope is not None:
        scope.error_code = code
    return JSONResponse(body, status_code=api_exc.status_code,
                        headers=api_exc.response_headers() or None)


def install_error_handlers(app: FastAPI) -> None:
    async def on_any(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFoundError(f"no such route: {_request.url.path}"))
        if exc.status_code == 405:
            err = InvalidRequestError(f"method {_request.method} is not allowed on "
                                      f"{_request.url.path}", code="method_not_allowed")
            err.status_code = 405
            return error_response(err)
        err = InvalidRequestError(str(exc.detail))
        err.status_code = exc.status_code
        return error_response(err)

    app.add_exception_handler(RequestValidationError, on_any)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_any)
