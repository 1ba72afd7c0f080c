"""What operators see: x-request-id on every response and in the JSON logs of every deployment
the request crossed (a chat request: the generator that serves it and the preprocessor; the
router's routes: the router), our Prometheus metrics on Ray's metrics endpoint, and logs that
never hold an API key or a storage secret."""

from __future__ import annotations

import json
import pathlib
import time
import uuid

import httpx

from tests.images import data_url, encode, photo
from tests.integration.conftest import API_KEY, LIMITED_KEYS, OTHER_KEY
from tests.integration.test_chat import chat_body
from tests.s3_server import SECRET_KEY


def serve_logs(server) -> dict[str, list[dict]]:
    """Deployment name -> JSON log records of its replicas (this stack's Ray session)."""
    out: dict[str, list[dict]] = {}
    for path in (server["ray_session"] / "logs" / "serve").glob("replica_*.log"):
        for raw in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                continue
            name = record.get("deployment", "?")  # "<app>_<deployment>"
            out.setdefault(name.split("_", 1)[-1], []).append(record)
    return out


def test_a_refused_request_logs_what_the_client_must_fix(client, server):
    """The access log line says 400; the line beside it, with the same request id, says
    why (what vLLM's benchmark client could not find out from our logs)."""
    request_id = f"test-{uuid.uuid4().hex}"
    resp = client.post("/v1/chat/completions", headers={"x-request-id": request_id},
                       json=chat_body("hi", no_such_field=1))
    assert resp.status_code == 400 and "no_such_field" in resp.json()["error"]["message"]
    deadline = time.monotonic() + 30
    while True:
        lines = [r["message"] for records in serve_logs(server).values() for r in records
                 if r.get("request_id") == request_id]
        if any("no_such_field" in line for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any(line.startswith("400 ") and "no_such_field" in line for line in lines), lines


def test_request_id_is_returned_and_logged_by_every_deployment(client, server):
    request_id = f"test-{uuid.uuid4().hex}"
    image = data_url(encode(photo(96, 64, seed=41), "JPEG"), "image/jpeg")
    resp = client.post("/v1/chat/completions", headers={"x-request-id": request_id},
                       json=chat_body([{"type": "image_url", "image_url": {"url": image}},
                                       {"type": "text", "text": "What?"}]))
    assert resp.status_code == 200 and resp.headers["x-request-id"] == request_id
    generated = client.post("/v1/chat/completions", json=chat_body("hi"))
    assert generated.headers.get("x-request-id")  # one is made up when the client sends none
    bad = client.post("/v1/chat/completions", json={"model": "nope"})
    assert bad.status_code == 400 and bad.headers.get("x-request-id")
    # the router's routes too (chat is served by the generator: server.chat_entry generator)
    listing_id = f"test-{uuid.uuid4().hex}"
    listed = client.get("/v1/files", headers={"x-request-id": listing_id})
    assert listed.headers["x-request-id"] == listing_id
    deadline = time.monotonic() + 30
    while True:
        logs = serve_logs(server)
        found = {dep for dep, records in logs.items()
                 if any(r.get("request_id") == request_id for r in records)}
        router = any(r.get("request_id") == listing_id for r in logs.get("Router", []))
        if (found >= {"ImagePreprocessor", "QVQGenerator"} and router) \
                or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found >= {"ImagePreprocessor", "QVQGenerator"}, found
    assert router, "the router logged no line with its request's id"
    generator_lines = [r["message"] for r in logs["QVQGenerator"]
                       if r.get("request_id") == request_id]
    assert any("prompt +" in m and "completion tokens" in m for m in generator_lines)


def metrics_text(server) -> str:
    session = server["ray_session"]
    port = next(session.glob("metrics_export_port_*")).read_text().strip()
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_our_metrics_reach_rays_prometheus_endpoint(client, server, forcing):
    image = data_url(encode(photo(80, 60, seed=43), "PNG"), "image/png")
    client.post("/v1/chat/completions", json=chat_body(
        [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "?"}]))
    looped = client.post("/v1/chat/completions",
                         json=chat_body("hi", max_tokens=300, **forcing.loop)).json()
    assert looped["choices"][0]["stop_reason"] == "loop_detected"
    with client.stream("POST", "/v1/chat/completions",
                       json=chat_body("hi", stream=True)) as resp:
        resp.read()
    assert client.post("/v1/chat/completions",
                       json={**chat_body("hi"), "model": "gpt-4o"}).status_code == 404
    wanted = ['ray_qvq_api_requests_total{', 'route="chat_completions"', 'code="model_not_found"',
              'ray_qvq_api_request_seconds_bucket', 'ray_qvq_tokens_total{',
              'kind="completion"', 'ray_qvq_image_stage_seconds_bucket', 'stage="decode"',
              'stage="resize"', 'stage="fetch"', 'ray_qvq_image_cache_lookups_total',
              'ray_qvq_image_bytes_bucket', 'ray_qvq_time_to_first_token_seconds_bucket',
              'ray_qvq_generation_seconds_bucket', 'ray_qvq_final_answers_total',
              'ray_qvq_reasoning_tokens_bucket', 'ray_qvq_stream_time_to_first_token_seconds',
              'ray_qvq_loop_guard_detections_total',
              'ray_qvq_batches_active',
              # exported at 0 from replica start, before any such event
              'ray_qvq_thinking_budget_exhausted_total{', 'ray_qvq_image_store_failures_total',
              'ray_qvq_language_mixed_answers_total{', 'ray_qvq_batch_lines_total{',
              'ray_qvq_admission_rejected_total{', 'ray_qvq_batch_lines_remaining']
    deadline = time.monotonic() + 90  # Ray exports every few seconds
    while True:
        text = metrics_text(server)
        missing = [w for w in wanted if w not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not missing, missing


def test_logs_hold_no_api_key_or_storage_secret(server):
    secrets = [API_KEY, OTHER_KEY, *LIMITED_KEYS.values(), SECRET_KEY]
    logs_dir = server["ray_session"] / "logs"
    for path in [*logs_dir.rglob("*.log"), *logs_dir.rglob("*.out"), *logs_dir.rglob("*.err"),
                 server["log"]]:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret[:6]}… in {path.name}"


def test_serve_says_where_things_are_once_healthy(server):
    """`qvq serve` (what `make run` runs) prints the API, health, metrics and log locations
    and how to stop it, after /health answers; each location is real."""
    deadline = time.monotonic() + 30
    while "qvq-serving is ready:" not in server["log"].read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    banner = server["log"].read_text().split("qvq-serving is ready:")[-1]
    rows = dict(line.strip().split(None, 1) for line in banner.splitlines()[1:6])
    assert rows["API"].split()[0] == f"{server['base']}/v1"
    assert httpx.get(rows["Health"].split()[0], timeout=10).status_code == 200
    metrics_url = rows["Metrics"].split()[0]
    assert metrics_url.startswith("http://127.0.0.1:") and metrics_url.endswith("/metrics")
    assert "ray_qvq_" in httpx.get(metrics_url, timeout=10).text
    logs = pathlib.Path(rows["Logs"].split()[0])
    assert (logs / "serve").is_dir() and logs.parent.resolve() == server["ray_session"]
    assert "kill -TERM" in rows["Stop"] and "Ctrl-C" in rows["Stop"]
