"""``response_format`` checked at the edge: what can be refused without an engine.

A JSON schema must be valid JSON Schema (its own metaschema), within the deployment's size and
nesting limits (``requests.structured_output``), so a bad or hostile schema is a 400 naming
what is wrong before any hop. Whether the engine's grammar backend can compile it is vLLM's
verdict, asked by the generator before the request is accepted
(:meth:`serving.generate.engine.vllm_engine.VLLMEngine.check`), still before any answer.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import exceptions as schema_errors
from jsonschema import validators

from serving.config import StructuredOutputConfig
from serving.errors import InvalidRequestError, elide
from serving.protocol import ChatCompletionRequest, JsonSchemaFormat

PARAM = "response_format.json_schema.schema"


def nesting_depth(value: Any) -> int:
    """Containers nested in a JSON document: a scalar is 0, ``{}`` 1, ``{"a": []}`` 2."""
    depth, level = 0, [(value, 1)]
    while level:
        node, at = level.pop()
        if isinstance(node, dict):
            depth = max(depth, at)
            level.extend((child, at + 1) for child in node.values())
        elif isinstance(node, list):
            depth = max(depth, at)
            level.extend((child, at + 1) for child in node)
    return depth


def check_schema(schema: dict[str, Any], limits: StructuredOutputConfig) -> None:
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.max_schema_bytes:
        raise InvalidRequestError(
            f"the JSON schema is {size} bytes; this server accepts at most "
            f"{limits.max_schema_bytes}", param=PARAM)
    depth = nesting_depth(schema)
    if depth > limits.max_schema_depth:
        raise InvalidRequestError(
            f"the JSON schema nests {depth} levels deep; this server accepts at most "
            f"{limits.max_schema_depth}", param=PARAM)
    validator = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except schema_errors.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise InvalidRequestError(
            f"the JSON schema is not valid JSON Schema"
            f"{f' at {where!r}' if where else ''}: {elide(exc.message, 300)}",
            param=PARAM) from None
    except schema_errors.UnknownType as exc:  # pragma: no cover - check_schema reports these
        raise InvalidRequestError(f"the JSON schema is not valid: {exc}", param=PARAM) from None


def check_response_format(chat: ChatCompletionRequest, limits: StructuredOutputConfig) -> None:
    fmt = chat.structured
    if isinstance(fmt, JsonSchemaFormat) and fmt.json_schema.schema_ is not None:
        check_schema(fmt.json_schema.schema_, limits)
