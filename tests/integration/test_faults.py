"""Faults, and what users see: the object store stopped and restarted, a preprocessing replica
killed mid-request, a generator replica killed mid-stream, the whole app restarted during a
batch job. Each test prints its recovery time (run with -s to see them). These tests run last
(conftest orders them): they disrupt the shared stack and leave it healthy again."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import signal
import time

import boto3
import httpx
import psutil
import pytest
from botocore.config import Config

from tests.images import data_url, encode, photo
from tests.integration.forcing import RUNS_TO_MAX_TOKENS
from tests.integration.polling import until_ok
from tests.integration.test_batches import line, results, submit, wait
from tests.integration.test_chat import chat_body
from tests.s3_server import ACCESS_KEY, SECRET_KEY

RECOVERY_LIMIT_S = 240


def replica_processes(deployment: str) -> list[psutil.Process]:
    tag = f"ServeReplica:qvq:{deployment}"
    return [p for p in psutil.process_iter(["cmdline"])
            if any(tag in part for part in (p.info["cmdline"] or []))]


def kill_replicas(deployment: str) -> list[int]:
    """SIGKILL every replica process of ``deployment`` and its children (vLLM's engine core),
    like a crashed pod."""
    victims = replica_processes(deployment)
    assert victims, f"no {deployment} replica process found"
    doomed = [p for v in victims for p in [v, *v.children(recursive=True)]]
    for p in doomed:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return [v.pid for v in victims]


def upload(client, seed: int) -> httpx.Response:
    data = encode(photo(64, 48, seed=seed), "PNG")
    return client.post("/v1/images", content=data, headers={"Content-Type": "image/png"})


def test_object_store_down_is_503_and_recovers_without_restart(client, server):
    s3 = server["s3"]
    assert upload(client, 1).status_code == 200
    s3.stop()
    stopped = time.monotonic()
    try:
        down = upload(client, 2)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "storage_unavailable"
        assert "Retry-After" in down.headers
        files = client.get("/v1/files")
        assert files.status_code == 503 and "Traceback" not in files.text
        # chat with an inline image still works: keeping request images is best effort
        image = data_url(encode(photo(64, 48, seed=3), "JPEG"), "image/jpeg")
        chat = client.post("/v1/chat/completions", json=chat_body(
            [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "?"}]))
        assert chat.status_code == 200, chat.text
        down_s = time.monotonic() - stopped
    finally:
        s3.start()
    restarted = time.monotonic()
    recovery = until_ok(lambda: upload(client, 4), limit_s=60)
    print(f"\nobject store: answers 503 while down ({down_s:.1f}s of checks); uploads work "
          f"{recovery:.1f}s after the store is back (restart took "
          f"{restarted - stopped - down_s:.1f}s)")
    assert client.get("/v1/files").status_code == 200
    # nothing half-written: every stored original is exactly the bytes its address names
    s3_client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=ACCESS_KEY,
                             aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                             config=Config(s3={"addressing_style": "path"}))
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket="qvq-test",
                                                                 Prefix="images/sha256/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys
    for key in keys:
        body = s3_client.get_object(Bucket="qvq-test", Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[-1], key


def test_preprocessor_killed_mid_request_is_retried_invisibly(client, server,
                                                               image_base_url):
    body = chat_body([{"type": "image_url", "image_url": {"url": f"{image_base_url}/slow.png"}},
                      {"type": "text", "text": "What?"}])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/v1/chat/completions", json=body)
        time.sleep(1.5)  # the replica is fetching (the image server answers after 3 s)
        killed = kill_replicas("ImagePreprocessor")
        t0 = time.monotonic()
        resp = pending.result(timeout=RECOVERY_LIMIT_S)
    took = time.monotonic() - t0
    assert resp.status_code == 200, resp.text  # no user-visible error
    assert [p.pid for p in replica_processes("ImagePreprocessor")] != killed
    print(f"\npreprocessor killed mid-request: answered 200 {took:.1f}s after the kill "
          "(retried on the replacement replica)")


def test_generator_killed_mid_stream_ends_cleanly_then_recovers(client, server):
    body = chat_body("Count the apples in the picture and explain step by step.",
                     max_tokens=3000, stream=True, **RUNS_TO_MAX_TOKENS)
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]  # text is flowing
        assert any(x.startswith("data: {") for x in got)
        kill_replicas("QVQGenerator")
        killed_at = time.monotonic()
        rest = [x for x in lines if x.startswith("data: ")]
    ended_s = time.monotonic() - killed_at
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][len("data: "):])
    assert error["error"]["type"] == "service_unavailable", error
    assert "Traceback" not in rest[-2]
    recovery = until_ok(lambda: client.post("/v1/chat/completions",
                                            json=chat_body("hi", max_tokens=2)),
                        RECOVERY_LIMIT_S)
    print(f"\ngenerator killed mid-stream: error event after {ended_s:.1f}s; the next request "
          f"succeeded {recovery:.1f}s after the kill (Serve replaced the replica)")


def test_app_restart_during_a_batch_resumes_it(openai_client, server):
    lines = [line(f"r{i:03d}", "Tell me about the picture.", max_tokens=24, ignore_eos=True)
             for i in range(40)]
    batch = submit(openai_client, lines)
    wait(openai_client, batch.id, until=lambda b: b.request_counts.completed >= 8)
    server["stop"]()
    stopped = time.monotonic()
    server["start"]()
    restarted_s = time.monotonic() - stopped
    done = wait(openai_client, batch.id, timeout_s=300)
    finished_s = time.monotonic() - stopped
    assert done.status == "completed", done
    ids = [r["custom_id"] for r in results(openai_client, done.output_file_id)]
    assert sorted(ids) == sorted(x["custom_id"] for x in lines)  # every line exactly once
    assert done.request_counts.completed == 40
    print(f"\napp restarted during a batch: healthy again {restarted_s:.1f}s after the stop, "
          f"batch finished {finished_s:.1f}s after it")


@pytest.fixture(autouse=True)
def _stack_is_healthy_after(server):
    yield
    with httpx.Client(base_url=server["base"], timeout=30) as c:
        until_ok(lambda: c.get("/health"), RECOVERY_LIMIT_S)

