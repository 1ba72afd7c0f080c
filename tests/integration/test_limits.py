"""Per-key limits, batch quotas, the request body limit and router admission control on the
real stack: 429 with Retry-After and x-ratelimit-* headers, 413 before parsing, 503 with
Retry-After beyond capacity, and the openai client's view of each."""

from __future__ import annotations

import contextlib
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.images import data_url, encode, photo
from tests.integration.conftest import LIMITED_KEYS, MAX_BODY_BYTES
from tests.integration.forcing import RUNS_TO_MAX_TOKENS
from tests.integration.polling import until_ok
from tests.integration.test_batches import jsonl, line, wait
from tests.integration.test_chat import MODEL, chat_body


def keyed(server, name: str) -> httpx.Client:
    return httpx.Client(base_url=server["base"], timeout=120,
                        headers={"Authorization": f"Bearer {LIMITED_KEYS[name]}"})


def test_requests_per_minute_gives_429_with_retry_after_and_headers(server):
    with keyed(server, "rpm") as client:
        seen = []
        for _ in range(3):
            resp = client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2))
            assert resp.status_code == 200, resp.text
            seen.append(int(resp.headers["x-ratelimit-remaining-requests"]))
            assert resp.headers["x-ratelimit-limit-requests"] == "3"
            assert resp.headers["x-ratelimit-reset-requests"].endswith("s")
        assert seen == [2, 1, 0]
        refused = client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert "requests per minute: limit 3" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 20
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    client = openai.OpenAI(base_url=f"{server['base']}/v1", api_key=LIMITED_KEYS["rpm"],
                           max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])


def test_unlimited_keys_get_no_rate_headers_and_no_limiter_hop_cost(client):
    for resp in (client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2)),
                 client.get("/v1/files"), client.get("/v1/models")):
        assert resp.status_code == 200
        assert not [h for h in resp.headers if h.startswith("x-ratelimit")]


def test_every_route_of_a_limited_key_reports_its_limits_without_charging(server):
    with keyed(server, "images") as client:
        for resp in (client.get("/v1/files"), client.get("/v1/batches"),
                     client.get("/v1/models"), client.get("/v1/files/file-missing")):
            assert resp.headers["x-ratelimit-limit-images"] == "2", resp.request.url
            assert resp.headers["x-ratelimit-remaining-images"] == "2"
            assert resp.headers["x-ratelimit-reset-images"].endswith("s")
        assert resp.status_code == 404  # errors carry them too


def test_concurrent_requests_are_capped_per_key(server):
    body = chat_body("Count the apples in the picture and explain step by step.",
                     max_tokens=3000, stream=True, **RUNS_TO_MAX_TOKENS)
    with keyed(server, "concurrent") as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as first, \
                client.stream("POST", "/v1/chat/completions", json=body) as second:
            assert first.status_code == second.status_code == 200
            third = client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2))
            assert third.status_code == 429
            assert "concurrent requests: limit 2" in third.json()["error"]["message"]
            assert third.headers["x-ratelimit-remaining-concurrent"] == "0"
            assert "Retry-After" in third.headers
        # the streams' leases are released as they close
        until_ok(lambda: client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2)),
                 limit_s=10, every_s=0.2)


def test_tokens_per_minute_reserve_and_settle(server, forcing):
    with keyed(server, "tpm") as client:
        too_big = client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=3500))
        assert too_big.status_code == 429
        assert too_big.json()["error"]["type"] == "tokens"
        assert "Request too large" in too_big.json()["error"]["message"]
        ok = client.post("/v1/chat/completions",
                         json=chat_body("hi", max_tokens=2000, **forcing.end_at_once))
        assert ok.status_code == 200
        assert ok.json()["usage"]["completion_tokens"] == 1  # forced: EOS first
        # the reservation (~2000) was settled with the real usage (the prompt and one token)
        used = ok.json()["usage"]["total_tokens"]
        remaining = int(client.post("/v1/chat/completions",
                                    json=chat_body("hi", max_tokens=1)).headers
                        ["x-ratelimit-remaining-tokens"])
        assert remaining >= 3000 - used - 200


def test_images_per_minute(server):
    image = data_url(encode(photo(64, 48, seed=5), "JPEG"), "image/jpeg")
    content = [{"type": "image_url", "image_url": {"url": image}},
               {"type": "text", "text": "What?"}]
    with keyed(server, "images") as client:
        two = client.post("/v1/chat/completions",
                          json=chat_body([content[0], content[0], content[1]]))
        assert two.status_code == 200, two.text
        assert two.headers["x-ratelimit-remaining-images"] == "0"
        one_more = client.post("/v1/chat/completions", json=chat_body(content))
        assert one_more.status_code == 429 and "images per minute" in one_more.text
        text_only = client.post("/v1/chat/completions", json=chat_body("hi"))
        assert text_only.status_code == 200


def test_active_batch_quota(server):
    client = openai.OpenAI(base_url=f"{server['base']}/v1", api_key=LIMITED_KEYS["batches"],
                           max_retries=0)
    lines = [line(f"q{i}", "Count.", max_tokens=64) for i in range(6)]
    upload = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    first = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    with pytest.raises(openai.RateLimitError) as exc:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert exc.value.body["code"] == "batch_quota_exceeded"
    assert "1 active batches, limit 1" in exc.value.body["message"]
    assert wait(client, first.id).status == "completed"
    client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                          completion_window="24h")


def test_body_limit_is_enforced_before_parsing(client):
    junk = b"{" + b"x" * (MAX_BODY_BYTES + 10)  # not even JSON: the size is refused first
    resp = client.post("/v1/chat/completions", content=junk,
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert "request body limit" in resp.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while read
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    resp = client.post("/v1/chat/completions", content=chunks(),
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert client.post("/v1/chat/completions", json=chat_body("hi")).status_code == 200


def test_beyond_router_capacity_is_503_with_retry_after_never_a_queue(server, client):
    """48 requests in flight per chat-entry replica (test config): hold 48 streams open, then
    one more is refused at once. The streams run to max_tokens whatever the text (ignore_eos,
    as long as the context allows: minutes of decoding with the engine running 32 at a time)
    and are opened all at once, so none can end before the refusal is tried, however fast
    this CPU decodes or however slowly a busy replica accepts."""
    body = chat_body("Count the apples in the picture and explain step by step.",
                     max_tokens=3600, stream=True, **RUNS_TO_MAX_TOKENS)
    with contextlib.ExitStack() as held, ThreadPoolExecutor(16) as pool:
        opened = list(pool.map(
            lambda _: held.enter_context(client.stream("POST", "/v1/chat/completions",
                                                       json=body)), range(48)))
        assert [resp.status_code for resp in opened] == [200] * 48
        refused = client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1
        with pytest.raises(openai.InternalServerError):  # what the openai client raises
            openai.OpenAI(base_url=f"{server['base']}/v1", api_key="sk-test-integration",
                          max_retries=0).chat.completions.create(
                model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    # closed streams give their slots back
    until_ok(lambda: client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2)),
             limit_s=30, every_s=0.5)
