"""Reasoning operations with the real engine on the tiny model. Every outcome is forced
(tests/integration/forcing.py), never hoped for: a +100 logit bias on one word makes the answer
that word repeated, which the loop guard must stop; the thinking budget's cue makes the split
find a final answer; streams and batch lines carry the same fields; the openai client parses
every response."""

from __future__ import annotations

import json

import httpx

from tests.integration.conftest import OTHER_KEY
from tests.integration.test_batches import line, results, submit, wait
from tests.integration.test_chat import MODEL, sse_events

PROMPT = "Count the apples in the picture and explain step by step."


def body(**fields):
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0.0, "seed": 1, **fields}


def test_forced_loop_is_stopped_long_before_max_tokens(openai_client, forcing):
    resp = openai_client.chat.completions.create(**body(max_tokens=1500),
                                                 logit_bias=forcing.loop["logit_bias"])
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.stop_reason == "loop_detected"
    loop = choice.qvq["loop"]
    assert loop["action"] == "stopped" and loop["period"] == 1
    assert loop["cycle_started_at"] == 0
    assert loop["at_token"] < 100  # min_repeated_tokens (64) plus a little
    assert resp.usage.completion_tokens == loop["at_token"] + 1
    assert choice.message.content == forcing.word * resp.usage.completion_tokens
    assert resp.usage.completion_tokens_details.reasoning_tokens == resp.usage.completion_tokens


def test_detect_mode_reports_the_loop_and_runs_to_max_tokens(client, forcing):
    stopped = client.post("/v1/chat/completions",
                          json=body(max_tokens=1500, **forcing.loop)).json()
    at = stopped["choices"][0]["qvq"]["loop"]["at_token"]
    resp = client.post("/v1/chat/completions",
                       json=body(max_tokens=at + 20, loop_guard="detect", **forcing.loop)).json()
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    assert choice["qvq"]["loop"]["action"] == "detected"
    assert choice["qvq"]["loop"]["at_token"] == at  # same text, same detection point
    assert resp["usage"]["completion_tokens"] == at + 20
    off = client.post("/v1/chat/completions",
                      json=body(max_tokens=at + 20, loop_guard="off", **forcing.loop)).json()
    assert off["choices"][0]["qvq"]["loop"] is None
    assert off["choices"][0]["message"]["content"] == choice["message"]["content"] \
        == forcing.word * (at + 20)


def test_thinking_budget_appends_the_cue_and_the_split_finds_the_answer(openai_client, forcing):
    resp = openai_client.chat.completions.create(
        **body(max_tokens=400), logit_bias=forcing.loop["logit_bias"],
        extra_body={"split_reasoning": True, "max_reasoning_tokens": 24,
                    "include_language_stats": True})
    choice = resp.choices[0]
    report = choice.qvq
    assert report["thinking_budget_exhausted"] and report["final_answer_found"]
    assert report["max_reasoning_tokens"] == 24
    assert choice.message.reasoning_content.rstrip() == forcing.word * 24  # first pass + cue
    assert set(choice.message.content.strip()) == {forcing.word}  # the conclude pass's
    details = resp.usage.completion_tokens_details
    assert details.reasoning_tokens == 24
    assert resp.usage.completion_tokens > 24  # cue and answer tokens follow
    assert set(report["language"]) >= {"dominant", "mixed", "minority_fraction"}


def test_unsplit_budget_answer_shows_the_cue(client, forcing):
    resp = client.post("/v1/chat/completions",
                       json=body(max_tokens=200, max_reasoning_tokens=10,
                                 **forcing.loop)).json()
    message = resp["choices"][0]["message"]
    assert message["content"].startswith(forcing.word * 10 + "\n\n**Final Answer**\n\n")
    assert message["reasoning_content"] is None
    assert resp["usage"]["completion_tokens_details"]["reasoning_tokens"] == 10


def test_split_stream_matches_the_non_streamed_answer(client, forcing):
    fields = {"max_tokens": 300, "split_reasoning": True, "max_reasoning_tokens": 16,
              **forcing.loop}
    whole = client.post("/v1/chat/completions", json=body(**fields)).json()
    with client.stream("POST", "/v1/chat/completions",
                       json=body(stream=True, stream_options={"include_usage": True},
                                 **fields)) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    message = whole["choices"][0]["message"]
    assert (reasoning, content) == (message["reasoning_content"], message["content"])
    assert reasoning.rstrip() == forcing.word * 16
    last = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert last["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert last["qvq"] == whole["choices"][0]["qvq"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_openai_client_streams_reasoning_deltas(openai_client, forcing):
    stream = openai_client.chat.completions.create(
        **body(max_tokens=120, stream=True), logit_bias=forcing.loop["logit_bias"],
        extra_body={"split_reasoning": True, "max_reasoning_tokens": 8})
    kinds = set()
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            if getattr(choice.delta, "reasoning_content", None):
                kinds.add("reasoning")
            if choice.delta.content:
                kinds.add("content")
            finish = choice.finish_reason or finish
    assert kinds == {"reasoning", "content"} and finish in ("stop", "length")


def test_budget_above_the_keys_ceiling_is_a_400(server):
    with httpx.Client(base_url=server["base"], timeout=60,
                      headers={"Authorization": f"Bearer {OTHER_KEY}"}) as other:
        resp = other.post("/v1/chat/completions",
                          json=body(max_tokens=50, max_reasoning_tokens=500))
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["param"] == "max_reasoning_tokens" and "at most 64" in error["message"]
        ok = other.post("/v1/chat/completions", json=body(max_tokens=50)).json()
        assert ok["choices"][0]["qvq"]["max_reasoning_tokens"] == 32  # the key's default


def test_batch_lines_get_the_same_reasoning_fields(openai_client, forcing):
    lines = [line("split", PROMPT, max_tokens=200, temperature=0.0, split_reasoning=True,
                  max_reasoning_tokens=12, **forcing.loop),
             line("loop", PROMPT, max_tokens=1500, temperature=0.0, **forcing.loop)]
    done = wait(openai_client, submit(openai_client, lines).id)
    assert done.status == "completed", done
    out = {r["custom_id"]: r["response"]["body"] for r in results(openai_client,
                                                                  done.output_file_id)}
    split = out["split"]["choices"][0]
    assert split["message"]["reasoning_content"].rstrip() == forcing.word * 12
    assert split["qvq"]["final_answer_found"]
    assert out["split"]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 12
    assert out["loop"]["choices"][0]["stop_reason"] == "loop_detected"
    assert json.dumps(out)  # plain JSON all the way down
