"""Reasoning operations with the real engine on the tiny model: greedy decoding of a random
model loops, which is what the loop guard is for; the thinking budget's cue makes the split
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


def test_greedy_loop_is_stopped_long_before_max_tokens(openai_client):
    resp = openai_client.chat.completions.create(**body(max_tokens=1500))
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.stop_reason == "loop_detected"
    loop = choice.qvq["loop"]
    assert loop["action"] == "stopped" and loop["period"] >= 1
    assert loop["at_token"] - loop["cycle_started_at"] < 600  # detection delay, in tokens
    assert resp.usage.completion_tokens == loop["at_token"] + 1 < 1500
    assert resp.usage.completion_tokens_details.reasoning_tokens == resp.usage.completion_tokens


def test_detect_mode_reports_the_loop_and_runs_to_max_tokens(client):
    stopped = client.post("/v1/chat/completions", json=body(max_tokens=1500)).json()
    at = stopped["choices"][0]["qvq"]["loop"]["at_token"]
    resp = client.post("/v1/chat/completions",
                       json=body(max_tokens=at + 20, loop_guard="detect")).json()
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    assert choice["qvq"]["loop"]["action"] == "detected"
    assert choice["qvq"]["loop"]["at_token"] == at  # same greedy text, same detection point
    assert resp["usage"]["completion_tokens"] == at + 20
    off = client.post("/v1/chat/completions",
                      json=body(max_tokens=at + 20, loop_guard="off")).json()
    assert off["choices"][0]["qvq"]["loop"] is None
    assert off["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_thinking_budget_appends_the_cue_and_the_split_finds_the_answer(openai_client):
    resp = openai_client.chat.completions.create(
        **body(max_tokens=400), extra_body={"split_reasoning": True, "max_reasoning_tokens": 24,
                                            "include_language_stats": True})
    choice = resp.choices[0]
    report = choice.qvq
    assert report["thinking_budget_exhausted"] and report["final_answer_found"]
    assert report["max_reasoning_tokens"] == 24
    assert choice.message.reasoning_content  # the first pass's text
    assert "Final Answer" not in choice.message.reasoning_content + choice.message.content
    details = resp.usage.completion_tokens_details
    assert details.reasoning_tokens == 24
    assert resp.usage.completion_tokens > 24  # cue and answer tokens follow
    assert set(report["language"]) >= {"dominant", "mixed", "minority_fraction"}


def test_unsplit_budget_answer_shows_the_cue(client):
    resp = client.post("/v1/chat/completions",
                       json=body(max_tokens=200, max_reasoning_tokens=10)).json()
    message = resp["choices"][0]["message"]
    assert "**Final Answer**" in message["content"] and message["reasoning_content"] is None
    assert resp["usage"]["completion_tokens_details"]["reasoning_tokens"] == 10


def test_split_stream_matches_the_non_streamed_answer(client):
    fields = {"max_tokens": 300, "split_reasoning": True, "max_reasoning_tokens": 16}
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
    last = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert last["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert last["qvq"] == whole["choices"][0]["qvq"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_openai_client_streams_reasoning_deltas(openai_client):
    stream = openai_client.chat.completions.create(
        **body(max_tokens=120, stream=True),
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
    assert "reasoning" in kinds and finish in ("stop", "length")


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


def test_batch_lines_get_the_same_reasoning_fields(openai_client):
    lines = [line("split", PROMPT, max_tokens=200, temperature=0.0, split_reasoning=True,
                  max_reasoning_tokens=12),
             line("loop", PROMPT, max_tokens=1500, temperature=0.0)]
    done = wait(openai_client, submit(openai_client, lines).id)
    assert done.status == "completed", done
    out = {r["custom_id"]: r["response"]["body"] for r in results(openai_client,
                                                                  done.output_file_id)}
    split = out["split"]["choices"][0]
    assert split["message"]["reasoning_content"] and split["qvq"]["final_answer_found"]
    assert out["split"]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 12
    assert out["loop"]["choices"][0]["stop_reason"] == "loop_detected"
    assert json.dumps(out)  # plain JSON all the way down
