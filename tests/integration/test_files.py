"""The Files API through the real stack and the official openai client, on the S3 backend."""

from __future__ import annotations

import io
import json

import openai
import pytest

from tests.integration.conftest import API_KEY, OTHER_KEY

LINES = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST",
                             "url": "/v1/chat/completions",
                             "body": {"model": "qvq-72b-preview",
                                      "messages": [{"role": "user", "content": "hi"}]}}).encode()
                 + b"\n" for i in range(3))


@pytest.fixture
def other_client(server):
    return openai.OpenAI(base_url=f"{server['base']}/v1", api_key=OTHER_KEY, max_retries=0)


def test_file_lifecycle_with_openai_client(openai_client, other_client):
    created = openai_client.files.create(file=("input.jsonl", io.BytesIO(LINES)),
                                         purpose="batch")
    assert created.id.startswith("file-") and created.bytes == len(LINES)
    assert created.filename == "input.jsonl" and created.purpose == "batch"
    assert openai_client.files.retrieve(created.id).id == created.id
    assert openai_client.files.content(created.id).read() == LINES
    assert created.id in [f.id for f in openai_client.files.list()]
    # another key cannot see, read or delete it
    with pytest.raises(openai.NotFoundError):
        other_client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other_client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        other_client.files.delete(created.id)
    assert created.id not in [f.id for f in other_client.files.list()]
    deleted = openai_client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(created.id)


def test_file_upload_errors(client, server):
    resp = client.post("/v1/files", files={"file": ("a.jsonl", LINES)},
                       data={"purpose": "fine-tune"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "purpose"
    resp = client.post("/v1/files", files={"file": ("a.jsonl", LINES)})
    assert resp.status_code == 400 and "purpose" in resp.json()["error"]["message"]
    resp = client.post("/v1/files", content=LINES, headers={"Content-Type": "application/jsonl"})
    assert resp.status_code == 400
    big = b"x" * (server["config"]["files"]["max_file_bytes"] + 1)
    resp = client.post("/v1/files", files={"file": ("big.jsonl", big)}, data={"purpose": "batch"})
    assert resp.status_code == 413
    assert client.get("/v1/files/file-" + "0" * 32).status_code == 404
    assert client.get("/v1/files/not-an-id/content").status_code == 404


def test_files_need_a_key(server):
    import httpx

    assert httpx.get(server["base"] + "/v1/files").status_code == 401
    ok = httpx.get(server["base"] + "/v1/files", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200 and ok.json()["object"] == "list"
