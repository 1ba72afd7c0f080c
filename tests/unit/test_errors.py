import pickle

import pytest
from pydantic import ValidationError

from serving.api.errors import validation_to_error
from serving.errors import (
    INTERNAL_MESSAGE,
    AuthenticationError,
    BlockedURLError,
    ContextLengthError,
    ImageError,
    ModelNotFoundError,
    PayloadTooLargeError,
    QVQError,
    ServiceUnavailableError,
    to_api_error,
    unwrap,
)
from serving.protocol import ChatCompletionRequest


@pytest.mark.parametrize("exc,status,etype,code", [
    (ImageError("x"), 400, "invalid_request_error", "invalid_image"),
    (BlockedURLError("x"), 400, "invalid_request_error", "image_url_blocked"),
    (ContextLengthError("x"), 400, "invalid_request_error", "context_length_exceeded"),
    (PayloadTooLargeError("x"), 413, "invalid_request_error", "payload_too_large"),
    (AuthenticationError("x"), 401, "authentication_error", "invalid_api_key"),
    (ModelNotFoundError("x", param="model"), 404, "invalid_request_error", "model_not_found"),
    (ServiceUnavailableError("x"), 503, "service_unavailable", "service_unavailable"),
])
def test_mapping(exc, status, etype, code):
    mapped = to_api_error(exc)
    assert mapped.status_code == status
    body = mapped.to_openai()["error"]
    assert body == {"message": "x", "type": etype, "param": exc.param, "code": code}


def test_errors_survive_pickling_with_fields():
    exc = ContextLengthError("too long", param="max_tokens")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is ContextLengthError
    assert (back.message, back.param, back.code) == ("too long", "max_tokens",
                                                     "context_length_exceeded")


def test_ray_wrapper_unwrapped():
    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause
    inner = ImageError("bad image")
    assert unwrap(Wrapper(Wrapper(inner))) is inner
    assert to_api_error(Wrapper(inner)) is inner


def test_unknown_errors_become_generic_500_without_details():
    mapped = to_api_error(RuntimeError("secret path /etc/x and token abc"))
    assert type(mapped) is QVQError and mapped.status_code == 500
    assert mapped.to_openai()["error"]["message"] == INTERNAL_MESSAGE


def _first_error(body: str):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(body)
    return validation_to_error(info.value)


def test_validation_messages_name_the_field():
    err = _first_error('{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
                       '"temperature": 7}')
    assert err.param == "temperature" and "temperature" in err.message
    err = _first_error('{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
                       '"max_tokens": "lots"}')
    assert err.param == "max_tokens"
    err = _first_error('{"messages": [{"role": "user", "content": "hi"}]}')
    assert err.param == "model" and "missing" in err.message
    err = _first_error('{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
                       '"tempreature": 1}')
    assert err.param == "tempreature" and "unknown parameter" in err.message
    err = _first_error('{"model": "m", "messages": [')
    assert "not valid JSON" in err.message


def test_unsupported_part_named():
    err = _first_error('{"model": "m", "messages": [{"role": "user", "content": '
                       '[{"type": "input_audio", "input_audio": {}}]}]}')
    assert "unsupported content part type 'input_audio'" in err.message
    assert err.param.startswith("messages[0]")
    err = _first_error('{"model": "m", "messages": [{"role": "tool", "content": "x"}]}')
    assert "unsupported role 'tool'" in err.message


@pytest.mark.parametrize("body", [
    '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "%s": 1}' % ("k" * 50_000),
    '{"model": "m", "messages": [{"role": "%s", "content": "hi"}]}' % ("r" * 50_000),
    '{"model": "m", "messages": [{"role": "user", "content": [{"type": "%s"}]}]}' % ("t" * 50_000),
])
def test_echoed_input_is_elided_so_error_bodies_stay_short(body):
    # Found by tests/unit/test_fuzz_requests.py: a 50 kB unknown key, role or part type came
    # back whole in the message (and param), so the error body grew with the request.
    err = _first_error(body)
    assert len(err.message) < 1000 and (err.param is None or len(err.param) <= 120)
    assert " ... " in err.message
    assert err.message.endswith(("; remove it", "supported: system, user, assistant",
                                 "supported: text, image_url"))


def test_replica_death_is_recognised_through_serve_and_ray_wrappers():
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import RayServeException

    from serving.errors import replica_died, to_api_error

    died = ActorDiedError()
    wrapped = RayTaskError("f", "tb", died)
    try:
        try:
            raise wrapped
        except RayTaskError as inner:
            raise RayServeException("an upstream actor died") from inner
    except RayServeException as outer:
        serve_error = outer
    assert replica_died(died) and replica_died(serve_error)
    assert not replica_died(ValueError("bad request"))
    api = to_api_error(serve_error)
    assert api.status_code == 503 and api.code == "replica_unavailable"


def test_a_vllm_option_we_do_not_take_is_named_as_such():
    from pydantic import ValidationError

    from serving.api.errors import validation_to_error
    from serving.protocol import ChatCompletionRequest

    try:
        ChatCompletionRequest.model_validate({"model": "m", "echo": True,
                                              "messages": [{"role": "user", "content": "x"}]})
    except ValidationError as exc:
        err = validation_to_error(exc)
    assert err.param == "echo" and "vLLM server option" in err.message
