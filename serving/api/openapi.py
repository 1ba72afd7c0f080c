"""The OpenAPI document at ``/openapi.json``, with the request bodies our routes really take.

Routes read their bodies themselves (to cap the size before parsing and to map every error to
one OpenAI-style shape), so FastAPI cannot see the body models; this fills them in from the same
pydantic models the routes validate with, plus the bearer-key security scheme. API fuzzing
(schemathesis) and client generators read it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from serving.protocol import BatchCreateRequest, ChatCompletionRequest

_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _bodies(ref) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("/v1/chat/completions", "post"): {"application/json": {"schema": ref(
            ChatCompletionRequest)}},
        ("/v1/batches", "post"): {"application/json": {"schema": ref(BatchCreateRequest)}},
        ("/v1/images", "post"): {"image/png": _BINARY, "image/jpeg": _BINARY,
                                 "application/octet-stream": _BINARY,
                                 "multipart/form-data": {"schema": {
                                     "type": "object", "required": ["file"],
                                     "properties": {"file": {"type": "string",
                                                             "format": "binary"}}}}},
        ("/v1/images/uploads", "post"): {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {"content_type": {"type": "string"}}}}},
        ("/v1/files", "post"): {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file", "purpose"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           "purpose": {"type": "string", "enum": ["batch"]}}}}},
    }


def install_openapi(api: FastAPI, model_ids: list[str] | None = None) -> None:
    """``model_ids``: the served names, so the schema's ``model`` field lists what exists."""
    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = get_openapi(title=api.title, version=api.version,
                             description=api.description, routes=api.routes)
        components = schema.setdefault("components", {})
        models = components.setdefault("schemas", {})

        def ref(model: type[BaseModel]) -> dict[str, str]:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            models.update(body.pop("$defs", {}))
            models[model.__name__] = body
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        for (path, method), content in _bodies(ref).items():
            operation = schema["paths"].get(path, {}).get(method)
            if operation is not None:
                operation["requestBody"] = {"required": path != "/v1/images/uploads",
                                            "content": content}
        if model_ids:
            models["ChatCompletionRequest"]["properties"]["model"]["enum"] = list(model_ids)
        components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"apiKey": []}]
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
