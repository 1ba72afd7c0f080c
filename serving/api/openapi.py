"""The OpenAPI document at ``/openapi.json``, with the request bodies our routes really take.

Routes read their bodies themselves (to cap the size before parsing and to map every error to
one OpenAI-style shape), so FastAPI cannot see the body models: each route declares its body
where it is defined (``openapi_extra=json_body(Model)`` or ``request_body(content)``), from the
same pydantic models it validates with. :func:`install_openapi` moves the models' schemas to
``components`` and adds the bearer-key security scheme. API fuzzing (schemathesis) and client
generators read it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF_TEMPLATE = "#/components/schemas/{model}"


def request_body(content: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """A route's ``openapi_extra`` declaring its body: media type -> schema."""
    return {"requestBody": {"required": required, "content": content}}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """A JSON body validated with ``model`` (its schema goes to ``components``)."""
    return request_body({"application/json": {"schema": model.model_json_schema(
        ref_template=REF_TEMPLATE)}})


def _hoist_models(schema: dict[str, Any]) -> None:
    """Each inline body model becomes ``components.schemas.<title>`` and a ``$ref``."""
    models = schema.setdefault("components", {}).setdefault("schemas", {})
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                body = media.get("schema", {})
                if "title" not in body or body.get("type") != "object":
                    continue
                body = dict(body)
                models.update(body.pop("$defs", {}))
                models[body["title"]] = body
                media["schema"] = {"$ref": REF_TEMPLATE.format(model=body["title"])}


def install_openapi(api: FastAPI, model_ids: list[str] | None = None) -> None:
    """``model_ids``: the served names, so the schema's ``model`` field lists what exists."""
    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = get_openapi(title=api.title, version=api.version,
                             description=api.description, routes=api.routes)
        _hoist_models(schema)
        models = schema["components"]["schemas"]
        chat = models.get("ChatCompletionRequest")
        if model_ids and chat is not None:
            chat["properties"]["model"]["enum"] = list(model_ids)
        schema["components"]["securitySchemes"] = {"apiKey": {"type": "http",
                                                              "scheme": "bearer"}}
        schema["security"] = [{"apiKey": []}]
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
