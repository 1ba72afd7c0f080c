"""The router's HTTP surface in-process (FastAPI's test client, no Ray): the resource route
modules over real services (Files and Batches on a local object store, the chat endpoint
with recording handles), and what the middleware adds to every route: OpenAI-style errors
whatever a route raised, no trace, and the API metrics."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serving.api.ingress import build_router_app
from serving.config import config_from_dict
from serving.messages import Completion, GenerationEvent
from tests.unit.api.handles import Handle

FINAL = Completion((GenerationEvent("final", text="answer", prompt_tokens=10,
                                    completion_tokens=3, finish_reason="stop"),))


class Failing:
    """A preprocessor handle whose replica died mid-call."""

    def __getattr__(self, name):
        raise RuntimeError(f"replica of {name} died: Traceback (most recent call last) ...")


@pytest.fixture
def config(tmp_path):
    return config_from_dict({"model": {"path": "m", "served_name": "qvq"},
                             "data_dir": str(tmp_path),
                             "storage": {"local": {"root": str(tmp_path / "store")}},
                             "files": {"max_file_bytes": 4096}}, environ={})


def client_of(config, *, preprocessor=None, generator=None, runner=None):
    app = build_router_app(config, preprocessor=preprocessor or Handle(),
                           generator=generator or Handle(complete=FINAL),
                           batch_runner=runner or Handle(kick=None))
    return TestClient(app, raise_server_exceptions=False), app


def test_every_resource_is_routed(config):
    client, _ = client_of(config)
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths == {"/v1/chat/completions", "/v1/images", "/v1/images/uploads",
                     "/v1/images/uploads/{upload_id}/complete", "/v1/images/{image_id}",
                     "/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content",
                     "/v1/batches", "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/cancel",
                     "/v1/models", "/v1/models/{model_id}", "/health"}


def test_openapi_bodies_are_the_models_the_routes_validate_with(config):
    client, _ = client_of(config)
    doc = client.get("/openapi.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert chat["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    schemas = doc["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["qvq"]
    assert "BatchCreateRequest" in schemas and "$defs" not in schemas["ChatCompletionRequest"]
    files = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert files["multipart/form-data"]["schema"]["required"] == ["file", "purpose"]
    assert doc["paths"]["/v1/images/uploads"]["post"]["requestBody"]["required"] is False
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_chat_completion_through_the_generator_handle(config):
    generator = Handle(complete=FINAL)
    client, app = client_of(config, generator=generator)
    resp = client.post("/v1/chat/completions", json={
        "model": "qvq", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "answer"
    assert [name for name, _ in generator.calls] == ["complete"]
    assert app.state.services.chat.gate.in_flight == 0


def test_a_failing_handle_is_an_openai_error_without_a_trace(config):
    client, _ = client_of(config, preprocessor=Failing())
    resp = client.get("/v1/images/" + "a" * 64)
    assert resp.status_code >= 500
    error = resp.json()["error"]
    assert error["message"] and error["type"]
    assert "Traceback" not in resp.text


def test_unknown_route_and_method_are_openai_errors(config):
    client, _ = client_of(config)
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"]
    wrong = client.put("/v1/files")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_files_round_trip_through_multipart(config):
    client, _ = client_of(config)
    lines = b'{"custom_id": "a"}\n'
    created = client.post("/v1/files", files={"file": ("in.jsonl", lines)},
                          data={"purpose": "batch"})
    assert created.status_code == 200, created.text
    file_id = created.json()["id"]
    assert created.json()["filename"] == "in.jsonl" and created.json()["bytes"] == len(lines)
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [file_id]
    assert client.get(f"/v1/files/{file_id}/content").content == lines
    assert client.delete(f"/v1/files/{file_id}").json()["deleted"] is True
    assert client.get(f"/v1/files/{file_id}").status_code == 404


def test_file_limits_and_malformed_forms_are_4xx(config):
    client, _ = client_of(config)
    too_big = client.post("/v1/files", files={"file": ("in.jsonl", b"x" * 5000)},
                          data={"purpose": "batch"})
    assert too_big.status_code == 413
    no_purpose = client.post("/v1/files", files={"file": ("in.jsonl", b"{}\n")})
    assert no_purpose.status_code == 400 and no_purpose.json()["error"]["param"] == "purpose"
    broken = client.post("/v1/files", content=b"--x\r\nnot a form",
                         headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert broken.status_code == 400


def test_batches_create_get_cancel_and_kick_the_runner(config):
    runner = Handle(kick=None)
    client, _ = client_of(config, runner=runner)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "qvq", "messages": [{"role": "user", "content": "hi"}]}}
    file_id = client.post("/v1/files", files={"file": ("in.jsonl", json.dumps(line).encode())},
                          data={"purpose": "batch"}).json()["id"]
    batch = client.post("/v1/batches", json={"input_file_id": file_id,
                                             "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"})
    assert batch.status_code == 200, batch.text
    batch_id = batch.json()["id"]
    assert "owner" not in batch.json()  # private fields stay private
    assert client.get(f"/v1/batches/{batch_id}").json()["status"] == "validating"
    assert client.post(f"/v1/batches/{batch_id}/cancel").json()["status"] == "cancelling"
    assert [name for name, _ in runner.calls] == ["kick", "kick"]
    wrong = client.post("/v1/batches", json={"input_file_id": file_id,
                                             "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "endpoint"


def test_models(config):
    client, _ = client_of(config)
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["qvq"]
    assert client.get("/v1/models/qvq").json()["id"] == "qvq"
    assert client.get("/v1/models/gpt-4o").status_code == 404


def test_every_response_is_counted_by_route_and_status(config, monkeypatch):
    client, app = client_of(config)
    counted = []
    metrics = app.state.services.chat.metrics
    monkeypatch.setattr(metrics.requests, "inc", lambda tags: counted.append(tags))
    client.get("/v1/models")
    client.get("/v1/models/gpt-4o")
    client.get("/v1/nothing")
    assert [(c["route"], c["status"]) for c in counted] == [
        ("list_models", "200"), ("get_model", "404"), ("unmatched", "404")]
