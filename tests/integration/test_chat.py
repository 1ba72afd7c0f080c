"""Chat completions through the real stack: plain HTTP and the official openai client."""

from __future__ import annotations

import concurrent.futures
import json

import httpx

from serving.preprocess.geometry import smart_resize, visual_tokens
from tests.images import data_url, encode, photo, png_url
from tests.integration.forcing import RUNS_TO_MAX_TOKENS

MODEL = "qvq-72b-preview"


def chat_body(content, **kwargs):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, **kwargs}


def image_content(*urls, text="Describe the image."):
    return [*({"type": "image_url", "image_url": {"url": u}} for u in urls),
            {"type": "text", "text": text}]


def assert_completion(body, max_tokens=8):
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= max_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def sse_events(resp: httpx.Response) -> list:
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_health_and_models(client, server):
    assert httpx.get(f"{server['base']}/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    ids = [m["id"] for m in models["data"]]
    assert models["object"] == "list" and MODEL in ids
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL


def test_text_only(client):
    resp = client.post("/v1/chat/completions", json=chat_body("Say hello."))
    assert resp.status_code == 200, resp.text
    assert_completion(resp.json())


def test_one_image_counts_visual_tokens(client, server):
    text = client.post("/v1/chat/completions",
                       json=chat_body(image_content(text="Describe."))).json()
    h, w = smart_resize(480, 640, min_pixels=server["config"]["image"]["min_pixels"],
                        max_pixels=server["config"]["image"]["max_pixels"])
    img = data_url(encode(photo(640, 480), "JPEG"), "image/jpeg")
    one = client.post("/v1/chat/completions", json=chat_body(image_content(img, text="Describe.")))
    assert one.status_code == 200, one.text
    usage = assert_completion(one.json())
    assert usage["prompt_tokens"] == text["usage"]["prompt_tokens"] + visual_tokens(h, w) + 2


def test_two_images(client):
    urls = [png_url(300, 200), data_url(encode(photo(1024, 1024), "JPEG"), "image/jpeg")]
    resp = client.post("/v1/chat/completions", json=chat_body(image_content(*urls)))
    assert resp.status_code == 200, resp.text
    assert_completion(resp.json())


def test_https_style_fetch_from_allowed_local_server(client, image_base_url):
    for path in ("/photo.jpg", "/redirect"):
        resp = client.post("/v1/chat/completions",
                           json=chat_body(image_content(image_base_url + path)))
        assert resp.status_code == 200, resp.text


def test_streaming_http_with_usage(client):
    body = chat_body(image_content(png_url()), stream=True, max_tokens=6,
                     stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    finish = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = chunks[-1]
    assert usage["choices"] == [] and 0 < usage["usage"]["completion_tokens"] <= 6


def test_streaming_without_usage_has_no_usage_chunk(client):
    with client.stream("POST", "/v1/chat/completions",
                       json=chat_body("hi", stream=True)) as resp:
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])


def test_openai_client_non_streaming(openai_client):
    resp = openai_client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0.7, top_p=0.9, seed=1, stop=["###"],
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": image_content(png_url(), data_url(
                      encode(photo(800, 600), "JPEG"), "image/jpeg"))}])
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 8


def test_openai_client_streaming(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": image_content(png_url())}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8


def test_seed_makes_sampling_repeatable(client):
    body = chat_body("Tell me something.", temperature=1.0, seed=1234, max_tokens=12)
    first = client.post("/v1/chat/completions", json=body).json()
    second = client.post("/v1/chat/completions", json=body).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_vllm_sampling_fields_reach_the_engine(openai_client):
    """What vLLM's own clients send in extra_body (vllm bench serve, LangChain/LiteLLM vLLM
    adapters). top_k=1 samples the most likely token whatever the temperature, so two answers
    are the same text; ignore_eos with min_tokens = max_tokens makes the length exact."""
    extra = {"top_k": 1, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 6,
             "ignore_eos": True}
    answers = [openai_client.chat.completions.create(
        model=MODEL, max_tokens=6, temperature=1.0, extra_body=extra,
        messages=[{"role": "user", "content": "Tell me something."}]) for _ in range(2)]
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    assert [a.usage.completion_tokens for a in answers] == [6, 6]


def test_stop_token_ids_end_the_answer_at_that_token(openai_client, forcing):
    """The forced answer is one token repeated; naming it in stop_token_ids ends the answer
    at its first occurrence, with finish_reason stop."""
    stopped = openai_client.chat.completions.create(
        model=MODEL, max_tokens=12, messages=[{"role": "user", "content": "Say something."}],
        extra_body={**forcing.loop, "stop_token_ids": [forcing.word_id], "loop_guard": "off"})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == 1


def test_max_completion_tokens_respected(client):
    resp = client.post("/v1/chat/completions",
                       json={"model": MODEL, "max_completion_tokens": 3,
                             "messages": [{"role": "user", "content": "Count to ten."}]})
    assert resp.json()["usage"]["completion_tokens"] <= 3


def test_32_concurrent_requests_all_succeed(server, client):
    from tests.integration.conftest import API_KEY

    bodies = [chat_body("hello there") if i % 2 else
              chat_body(image_content(png_url(64 + i, 64, (i * 7 % 256, 10, 90))))
              for i in range(32)]

    def send(body):
        with httpx.Client(base_url=server["base"], timeout=300,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            return c.post("/v1/chat/completions", json=body)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(send, bodies))
    assert [r.status_code for r in results] == [200] * 32
    for r in results:
        assert_completion(r.json())


def test_client_disconnect_mid_stream_leaves_server_healthy(client, server):
    body = chat_body("Write a long story.", stream=True, max_tokens=1500, **RUNS_TO_MAX_TOKENS)
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        for _ in range(3):
            next(lines)
    # the connection is closed with generation still running; the engine aborts it
    resp = client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2))
    assert resp.status_code == 200
    assert httpx.get(server["base"] + "/health", timeout=30).status_code == 200
