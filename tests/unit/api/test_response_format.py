"""response_format and the other per-request options checked at the edge (no engine)."""

import pytest

from serving.api.response_format import check_response_format, nesting_depth
from serving.api.validation import check_request_options
from serving.config import RequestsConfig, StructuredOutputConfig
from serving.errors import InvalidRequestError
from serving.protocol import ChatCompletionRequest

LIMITS = StructuredOutputConfig(max_schema_bytes=2000, max_schema_depth=6)


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                 **fields)


def schema_chat(schema) -> ChatCompletionRequest:
    return chat(response_format={"type": "json_schema",
                                 "json_schema": {"name": "s", "schema": schema}})


@pytest.mark.parametrize(("value", "depth"), [
    (1, 0), ({}, 1), ({"a": []}, 2), ({"a": [{"b": 1}]}, 3), ([[[]], {}], 3)])
def test_nesting_depth(value, depth):
    assert nesting_depth(value) == depth


@pytest.mark.parametrize("fmt", [
    None, {"type": "text"}, {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "no_schema"}},
])
def test_formats_without_a_schema_pass(fmt):
    check_response_format(chat(response_format=fmt), LIMITS)


def test_a_valid_schema_passes():
    check_response_format(schema_chat({"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0}, "b": {"enum": ["x", "y"]}},
        "required": ["a"], "additionalProperties": False}), LIMITS)


@pytest.mark.parametrize(("schema", "says"), [
    ({"type": "objekt"}, "not valid JSON Schema"),
    ({"properties": {"a": {"minLength": -1}}}, "at 'properties/a/minLength'"),
    ({"description": "x" * 3000}, "at most 2000"),
    ({"items": {"items": {"items": {"items": {}}}}}, "nests 5 levels deep"),
])
def test_bad_schemas_name_what_is_wrong(schema, says):
    limits = StructuredOutputConfig(max_schema_bytes=2000, max_schema_depth=4)
    with pytest.raises(InvalidRequestError, match=says) as info:
        check_response_format(schema_chat(schema), limits)
    assert info.value.param == "response_format.json_schema.schema"
    assert info.value.status_code == 400


def test_choices_above_the_ceiling_are_refused():
    config = RequestsConfig(max_choices=4)
    check_request_options(config, chat(n=4), None)
    with pytest.raises(InvalidRequestError, match="at most 4") as info:
        check_request_options(config, chat(n=5), None)
    assert info.value.param == "n"


def test_priority_is_for_listed_keys_only():
    config = RequestsConfig(priority_key_ids=["vip"])
    check_request_options(config, chat(priority=-5), "vip")
    for key in ("other", None):
        with pytest.raises(InvalidRequestError, match="priority") as info:
            check_request_options(config, chat(priority=-5), key)
        assert info.value.param == "priority"
    check_request_options(config, chat(), "other")
