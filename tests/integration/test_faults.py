"""Faults, and what users see: the object store stopped and restarted, a preprocessing replica
killed mid-request, a generator replica killed mid-stream, the whole app restarted during a
batch job. Each test prints its recovery time (run with -s to see them). These tests run last
(conftest orders them): they disrupt the shared stack and leave it healthy again."""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import json
import re
import signal
import time

import boto3
import httpx
import psutil
import pytest
from botocore.config import Config

from tests.images import data_url, encode, photo
from tests.integration.conftest import API_KEY, Stack, free_port
from tests.integration.forcing import RUNS_TO_MAX_TOKENS
from tests.integration.polling import until_ok
from tests.integration.test_batches import line, results, submit, wait
from tests.integration.test_chat import chat_body
from tests.s3_server import ACCESS_KEY, SECRET_KEY

RECOVERY_LIMIT_S = 240


def replica_processes(deployment: str) -> list[psutil.Process]:
    """Replica processes of ``deployment`` in either application (qvq, qvq-chat)."""
    title = re.compile(rf"ServeReplica:qvq(-chat)?:{deployment}\b")
    return [p for p in psutil.process_iter(["cmdline"])
            if title.search(" ".join(p.info["cmdline"] or []))]


def kill_replicas(deployment: str) -> list[int]:
    """SIGKILL every replica process of ``deployment``, and only it: no shutdown code runs,
    as when Ray kills an actor or the kernel kills it for memory. What it started (vLLM's
    engine processes) must die with it (serving/generate/engine/reaper.py);
    ``engine_orphans`` checks."""
    victims = replica_processes(deployment)
    assert victims, f"no {deployment} replica process found"
    kill_replicas.children = [c for v in victims for c in v.children(recursive=True)]
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return [v.pid for v in victims]


def engine_orphans(timeout_s: float = 30) -> list[str]:
    """What the last killed replicas had started and is still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for child in getattr(kill_replicas, "children", []):
            try:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{child.pid} {child.name()}")
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


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


def test_generator_killed_mid_stream_drops_its_streams_then_recovers(client, server):
    """chat_entry generator: the replica that dies is the one holding the client's response,
    so the stream breaks off (no [DONE]; the openai client raises), its engine goes down with
    it, and Serve's replacement serves the next request. (chat_entry router keeps the
    connection on the router and ends such a stream with an error event: see the last test.)"""
    body = chat_body("Count the apples in the picture and explain step by step.",
                     max_tokens=3000, stream=True, **RUNS_TO_MAX_TOKENS)
    rest: list[str] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]  # text is flowing
        assert any(x.startswith("data: {") for x in got)
        kill_replicas("QVQGenerator")
        killed_at = time.monotonic()
        try:
            rest = [x for x in lines if x.startswith("data: ")]
        except httpx.HTTPError:
            pass  # the response was cut: what HAProxy does when its server goes away
    ended_s = time.monotonic() - killed_at
    assert "data: [DONE]" not in rest and ended_s < 60
    assert kill_replicas.children, "the generator replica had no engine processes"
    assert engine_orphans() == []  # vLLM's engine went down with its replica
    recovery = until_ok(lambda: client.post("/v1/chat/completions",
                                            json=chat_body("hi", max_tokens=2)),
                        RECOVERY_LIMIT_S)
    print(f"\ngenerator killed mid-stream: the stream broke off {ended_s:.1f}s after the kill; "
          f"the next request succeeded {recovery:.1f}s after it (Serve replaced the replica)")


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



def test_router_entry_ends_streams_cleanly_and_resends_when_a_generator_dies(server, tmp_path):
    """chat_entry router, on a stack of its own: the router holds the client's connection, so
    when the generator replica dies mid-stream the stream ends with an error event and
    [DONE], and a non-streamed request that was generating is sent again to the replacement
    replica and answered in full."""
    server["stop"]()
    config = copy.deepcopy(server["config"])
    config["server"].update(chat_entry="router", port=free_port())
    stack = Stack(config, tmp_path)
    try:
        stack.start()
        with httpx.Client(base_url=stack.base, timeout=RECOVERY_LIMIT_S,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as routed:
            body = chat_body("Count the apples in the picture and explain step by step.",
                             max_tokens=3000, stream=True, **RUNS_TO_MAX_TOKENS)
            with routed.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                lines = resp.iter_lines()
                assert any(next(lines).startswith("data: {") for _ in range(6))
                kill_replicas("QVQGenerator")
                killed_at = time.monotonic()
                rest = [x for x in lines if x.startswith("data: ")]
            ended_s = time.monotonic() - killed_at
            assert rest[-1] == "data: [DONE]"
            error = json.loads(rest[-2][len("data: "):])
            assert error["error"]["type"] == "service_unavailable", error
            assert "Traceback" not in rest[-2]
            assert engine_orphans() == []
            until_ok(lambda: routed.post("/v1/chat/completions",
                                         json=chat_body("hi", max_tokens=2)),
                     RECOVERY_LIMIT_S)
            long = chat_body("Tell a long story.", max_tokens=1200, **RUNS_TO_MAX_TOKENS)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(routed.post, "/v1/chat/completions", json=long)
                time.sleep(2)  # generating: 1200 tokens take longer than this on any CPU
                kill_replicas("QVQGenerator")
                t0 = time.monotonic()
                answered = pending.result(timeout=RECOVERY_LIMIT_S)
            resent_s = time.monotonic() - t0
            assert answered.status_code == 200, answered.text
            assert answered.json()["usage"]["completion_tokens"] == 1200
            assert engine_orphans() == []
        print(f"\nchat_entry router: error event {ended_s:.1f}s after the generator died; a "
              f"non-streamed request sent again and answered {resent_s:.1f}s after the kill")
    finally:
        stack.stop()
        server["start"]()
