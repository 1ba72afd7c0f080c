"""The request surface beyond one plain answer, on the real engine through the official client:
structured output (response_format, parse(), the reason-then-schema mode), logprobs, n > 1,
priority, truncate_prompt_tokens, and response_format in batch lines.

The tiny model's weights are random, so nothing here depends on what it writes: constrained
decoding makes any output schema-valid (the schemas leave only enums and booleans open, so an
answer is a few tokens long whatever the weights), and the rest is forced
(tests/integration/forcing.py) or holds for any text (counts, indices, shapes).
"""

from __future__ import annotations

import json
from enum import StrEnum

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict

from tests.images import data_url, encode, photo
from tests.integration.conftest import OTHER_KEY
from tests.integration.forcing import RUNS_TO_MAX_TOKENS
from tests.integration.test_batches import line, results, submit, wait

MODEL = "qvq-72b-preview"
PROMPT = [{"role": "user", "content": "Is the sky blue? Answer in JSON."}]


class Answer(StrEnum):
    yes = "yes"
    no = "no"


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Answer
    sure: bool


VERDICT_SCHEMA = {"type": "object", "additionalProperties": False,
                  "required": ["answer", "sure"],
                  "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}}}


def nested_arrays(depth: int) -> dict:
    schema: dict = {"type": "array"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def schema_format(schema=VERDICT_SCHEMA) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema,
                                                   "strict": True}}


def chat(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, **body})


# ----------------------------------------------------------------------- structured output


def test_parse_returns_the_pydantic_object(openai_client):
    done = openai_client.chat.completions.parse(model=MODEL, messages=PROMPT,
                                                response_format=Verdict, max_tokens=200)
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Verdict)
    assert Verdict.model_validate_json(choice.message.content) == choice.message.parsed


def test_reason_first_then_answer_in_the_schema(openai_client, forcing):
    """Split mode: the reasoning runs free (here forced to one word repeated) until the
    thinking budget ends it; the cue follows, then the answer is decoded under the schema."""
    done = openai_client.chat.completions.parse(
        model=MODEL, messages=PROMPT, response_format=Verdict, max_tokens=300,
        extra_body={"split_reasoning": True, "max_reasoning_tokens": 20, "loop_guard": "off",
                    **forcing.loop})
    choice = done.choices[0]
    message = choice.message
    assert isinstance(message.parsed, Verdict)
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.strip() == forcing.word * 20
    assert done.usage.completion_tokens_details.reasoning_tokens == 20
    report = choice.model_extra["qvq"]
    assert report["thinking_budget_exhausted"] and report["final_answer_found"]


def test_without_split_mode_the_schema_holds_from_the_first_token(openai_client, forcing):
    """The forced word would win every step; the schema does not let it in."""
    done = openai_client.chat.completions.parse(
        model=MODEL, messages=PROMPT, response_format=Verdict, max_tokens=200,
        extra_body={"split_reasoning": False, **forcing.loop})
    assert isinstance(done.choices[0].message.parsed, Verdict)
    assert done.choices[0].message.model_extra.get("reasoning_content") is None
    assert done.usage.completion_tokens_details.reasoning_tokens == 0


def test_json_object_mode(client, tiny_model_dir):
    """Any JSON object; a bias on ``}`` makes it the empty one, whatever the weights."""
    from transformers import AutoTokenizer

    brace = AutoTokenizer.from_pretrained(str(tiny_model_dir)).convert_tokens_to_ids("}")
    resp = chat(client, max_tokens=50, response_format={"type": "json_object"},
                logit_bias={str(brace): 100})
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert json.loads(choice["message"]["content"]) == {}
    assert choice["finish_reason"] == "stop"


def test_streamed_json_schema_answer_parses(client):
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": MODEL, "messages": PROMPT, "stream": True,
                             "max_tokens": 200, "response_format": schema_format()}) as resp:
        assert resp.status_code == 200
        events = [json.loads(ln[6:]) for ln in resp.iter_lines()
                  if ln.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e["choices"])
    Verdict.model_validate_json(text)


@pytest.mark.parametrize(("schema", "says"), [
    ({"type": "objekt"}, "not valid JSON Schema"),
    ({"type": "object", "properties": {"a": {"minLength": "three"}}}, "not valid JSON Schema"),
    ({"type": "object", "description": "x" * 40_000}, "bytes"),
    (nested_arrays(20), "levels deep"),
])
def test_bad_schemas_are_a_400_before_any_work(client, schema, says):
    for stream in (False, True):
        resp = chat(client, stream=stream, response_format=schema_format(schema))
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["param"] == "response_format.json_schema.schema"
        assert says in error["message"]


def test_a_schema_the_engine_cannot_compile_is_a_400_before_the_stream(client):
    """Valid JSON Schema that vLLM's grammar backends refuse (a pattern no regex engine of
    theirs accepts): the generator asks the engine before accepting the request."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}},
              "required": ["a"]}
    for stream in (False, True):
        resp = chat(client, stream=stream, max_tokens=20, response_format=schema_format(schema))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "response_format"


def test_response_format_in_batch_lines(openai_client):
    good = line("verdict", "Is the sky blue?", max_tokens=200,
                response_format=schema_format())
    done = wait(openai_client, submit(openai_client, [good]).id)
    assert done.status == "completed", done
    (result,) = results(openai_client, done.output_file_id)
    Verdict.model_validate_json(result["response"]["body"]["choices"][0]["message"]["content"])

    bad = line("bad-schema", "hi", response_format=schema_format({"type": "objekt"}))
    failed = wait(openai_client, submit(openai_client, [good, bad]).id)
    assert failed.status == "failed"
    (error,) = failed.errors.data
    assert error.line == 2 and "JSON Schema" in error.message


# ------------------------------------------------------------------------------- logprobs


def test_logprobs_one_entry_per_completion_token(openai_client):
    done = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=8, logprobs=True, top_logprobs=3,
        extra_body=RUNS_TO_MAX_TOKENS)
    entries = done.choices[0].logprobs.content
    assert len(entries) == done.usage.completion_tokens == 8
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        alternatives = [alt.logprob for alt in entry.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True)
        assert entry.logprob <= alternatives[0] + 1e-6
        assert bytes(entry.bytes) == entry.token.encode()


def test_streamed_logprobs_add_up_to_the_usage(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=8, logprobs=True, stream=True,
        stream_options={"include_usage": True}, extra_body=RUNS_TO_MAX_TOKENS)
    entries, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.logprobs is not None:
                entries += choice.logprobs.content or []
    assert len(entries) == usage.completion_tokens == 8
    assert all(entry.top_logprobs == [] for entry in entries)


def test_reasoning_tokens_carry_logprobs_too(openai_client, forcing):
    """Split mode with a thinking budget: the reasoning tokens' entries are in
    logprobs.reasoning_content, the rest (the cue, certain, and the answer) in content."""
    done = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=40, logprobs=True,
        extra_body={"split_reasoning": True, "max_reasoning_tokens": 10, "loop_guard": "off",
                    **forcing.loop})
    logprobs = done.choices[0].logprobs
    reasoning = logprobs.model_extra["reasoning_content"]
    assert len(reasoning) == done.usage.completion_tokens_details.reasoning_tokens == 10
    assert len(reasoning) + len(logprobs.content) == done.usage.completion_tokens
    assert {entry["token"].strip() for entry in reasoning} == {forcing.word}
    assert any(entry.logprob == 0.0 for entry in logprobs.content)  # the injected cue


# ------------------------------------------------------------------------- n, seed, priority


def test_n_choices(openai_client):
    done = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=5, n=3, extra_body=RUNS_TO_MAX_TOKENS)
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert done.usage.completion_tokens == 15
    assert done.usage.prompt_tokens == openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=1).usage.prompt_tokens


def test_n_choices_streamed(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=5, n=3, stream=True,
        stream_options={"include_usage": True}, extra_body=RUNS_TO_MAX_TOKENS)
    text, finished, usage = {0: "", 1: "", 2: ""}, {}, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length", 2: "length"}
    assert usage.completion_tokens == 15 and all(text.values())


def test_seeded_choices_are_distinct_and_repeatable(openai_client):
    def answers():
        done = openai_client.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=12, n=2, seed=7, temperature=1.0,
            extra_body=RUNS_TO_MAX_TOKENS)
        return [c.message.content for c in done.choices]

    first = answers()
    assert answers() == first


def test_n_above_the_ceiling_is_a_400(client):
    resp = chat(client, n=9)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "n"


def test_priority_only_for_allowed_keys(client, server):
    assert chat(client, max_tokens=2, priority=-5).status_code == 200
    other = httpx.post(f"{server['base']}/v1/chat/completions",
                       headers={"Authorization": f"Bearer {OTHER_KEY}"},
                       json={"model": MODEL, "messages": PROMPT, "priority": -5}, timeout=60)
    assert other.status_code == 400 and other.json()["error"]["param"] == "priority"


# ------------------------------------------------------------------ truncate_prompt_tokens


def test_truncate_prompt_tokens_keeps_the_last_tokens(client):
    long = [{"role": "user", "content": "tell me more " * 200}]
    whole = client.post("/v1/chat/completions", json={"model": MODEL, "messages": long,
                                                      "max_tokens": 1}).json()
    assert whole["usage"]["prompt_tokens"] > 300
    cut = client.post("/v1/chat/completions",
                      json={"model": MODEL, "messages": long, "max_tokens": 1,
                            "truncate_prompt_tokens": 100}).json()
    assert cut["usage"]["prompt_tokens"] == 100


def test_truncation_never_cuts_into_an_image(client):
    image = data_url(encode(photo(320, 240, seed=5), "PNG"), "image/png")
    resp = client.post("/v1/chat/completions", json={
        "model": MODEL, "max_tokens": 1, "truncate_prompt_tokens": 20,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "What is this?"}]}]})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "truncate_prompt_tokens" and "image" in error["message"]


def test_the_openai_client_sees_a_bad_schema_as_bad_request(openai_client):
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model=MODEL, messages=PROMPT,
                                              response_format=schema_format({"type": 3}))
