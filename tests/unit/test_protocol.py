import re

import pytest
from pydantic import ValidationError

from serving.protocol import ChatCompletionRequest


def parse(**kwargs):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    return ChatCompletionRequest.model_validate(body)


def test_image_url_string_and_object_forms():
    req = parse(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": "data:image/png;base64,AA"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}},
        {"type": "text", "text": "compare"}]}])
    assert req.image_urls() == ["data:image/png;base64,AA", "https://x/y.png"]


def test_max_completion_tokens_wins():
    assert parse(max_tokens=5, max_completion_tokens=9).requested_max_tokens == 9
    assert parse(max_tokens=5).requested_max_tokens == 5


@pytest.mark.parametrize("kwargs", [
    {"n": 0}, {"stop": ["a", "b", "c", "d", "e"]}, {"stop": [""]}, {"top_p": 0},
    {"stream_options": {"include_usage": True}},
    {"messages": []},
    {"messages": [{"role": "user", "content": []}]},
    {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": "x"}]}]},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    {"logit_bias": {"a": 1}}, {"logit_bias": {"-1": 1}}, {"logit_bias": {"5": 101}},
    {"logit_bias": {"٣": 1}}, {"logit_bias": {str(i): 1 for i in range(301)}},
    {"min_tokens": -1}, {"min_tokens": 6, "max_tokens": 5},
    {"min_tokens": 6, "max_tokens": 9, "max_completion_tokens": 5},
    {"top_k": -2}, {"min_p": 1.5}, {"repetition_penalty": 0}, {"repetition_penalty": 3},
    {"stop_token_ids": [-1]}, {"stop_token_ids": list(range(65))},
    {"skip_special_tokens": [True]},
    {"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21},
    {"response_format": {"type": "xml"}},
    {"response_format": {"type": "json_schema"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}},
    {"truncate_prompt_tokens": -2}, {"priority": 10**6},
])
def test_rejected(kwargs):
    with pytest.raises(ValidationError):
        parse(**kwargs)


def test_stop_normalised_to_list():
    assert parse(stop="###").stop == ["###"]


def test_without_image_data_keeps_structure_drops_bytes():
    big = "data:image/png;base64," + "A" * 100_000
    req = parse(messages=[
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "image_url", "image_url": {"url": big,
                                                                         "detail": "low"}},
                                     {"type": "image_url", "image_url": "https://x/y.png"}]}])
    stripped = req.without_image_data()
    assert stripped.image_urls() == ["image:0", "image:1"]
    assert stripped.messages[1].content[1].image_url.detail == "low"
    assert stripped.messages[1].content[0].text == "a"
    assert len(stripped.model_dump_json()) < 1000
    assert req.image_urls()[0] == big  # the original is untouched


@pytest.mark.parametrize("seed", [2**63, 2**64, -(2**63) - 1, 10**30])
def test_seed_outside_int64_rejected(seed):
    # vLLM serialises the seed with msgpack (ints up to 2**64 - 1) and seeds a torch generator
    # (int64); a larger one failed inside the engine client as a 500 instead of a 400.
    with pytest.raises(ValidationError, match="seed"):
        parse(seed=seed)


@pytest.mark.parametrize("seed", [0, -1, 2**63 - 1, -(2**63)])
def test_seed_int64_accepted(seed):
    assert parse(seed=seed).seed == seed


def test_sampling_extensions_accepted():
    req = parse(logit_bias={"12": -100, "7": 2.5}, min_tokens=4, max_tokens=4, ignore_eos=True)
    assert (req.logit_bias, req.min_tokens, req.ignore_eos) == ({"12": -100, "7": 2.5}, 4, True)
    assert (parse().logit_bias, parse().min_tokens, parse().ignore_eos) == (None, 0, False)


def test_request_fields_against_vllms_own_chat_completion_request():
    """Every field we take is one vLLM's server takes too (or one of our reasoning controls),
    and every vLLM field we refuse is listed as refused: a vLLM upgrade that adds or drops a
    field fails here and names it."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest as VLLMChatCompletionRequest,
    )

    from serving.protocol import QVQ_FIELDS, VLLM_FIELDS_NOT_ACCEPTED

    ours = set(ChatCompletionRequest.model_fields)
    theirs = set(VLLMChatCompletionRequest.model_fields)
    assert ours - theirs == QVQ_FIELDS
    assert theirs - ours == VLLM_FIELDS_NOT_ACCEPTED


def image_request(image_url):
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": image_url}]}]}


def test_image_url_takes_explicit_pixel_bounds():
    req = ChatCompletionRequest.model_validate(image_request(
        {"url": "https://x/y.png", "detail": "low", "min_pixels": 3136, "max_pixels": 50176}))
    image_url = req.messages[0].content[1].image_url
    assert (image_url.detail, image_url.min_pixels, image_url.max_pixels) == ("low", 3136, 50176)
    # the generator gets pixels, not bounds: the placeholder copy keeps only the detail
    assert req.without_image_data().messages[0].content[1].image_url.max_pixels is None


@pytest.mark.parametrize("image_url,param,match", [
    ({"url": "u", "max_pixels": 100}, "max_pixels", "greater than or equal to 784"),
    ({"url": "u", "min_pixels": 0}, "min_pixels", "greater than or equal to 784"),
    ({"url": "u", "min_pixels": 5000, "max_pixels": 4000}, "max_pixels",
     r"max_pixels \(4000\) must not be below min_pixels \(5000\)"),
    ({"url": "u", "detail": "medium"}, "detail", "'auto', 'low' or 'high'"),
])
def test_bad_pixel_bounds_are_a_400_naming_the_field(image_url, param, match):
    from serving.api.errors import validation_to_error

    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(image_request(image_url))
    error = validation_to_error(info.value)
    assert error.status_code == 400
    assert error.param == f"messages[0].content[1].image_url.{param}"
    assert re.search(match, error.message)
