"""Batch jobs end to end: the openai client, real engine, real S3; validation, runtime errors,
ownership, cancel, and a runner killed with SIGKILL mid-job that resumes exactly once."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time

import openai
import pytest

from tests.images import data_url, encode, photo, png_url
from tests.integration.conftest import OTHER_KEY

MODEL = "qvq-72b-preview"


def line(custom_id: str, content, max_tokens: int = 4, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "max_tokens": max_tokens,
                     "messages": [{"role": "user", "content": content}], **body}}


def jsonl(lines: list) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n"
                    for x in lines)


def submit(client: openai.OpenAI, lines: list):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata={"suite": "it"})


def wait(client, batch_id, statuses=("completed", "failed", "cancelled", "expired"),
         timeout_s=300, until=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or (until and until(batch)):
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} stuck in {batch.status}: {batch.request_counts}")


def results(client, file_id) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).read().splitlines() if x]


def test_happy_path_with_images(openai_client):
    image = data_url(encode(photo(320, 240, seed=77), "JPEG"), "image/jpeg")
    lines = [line("text-1", "Say hi."), line("text-2", "Count to three.", max_tokens=6),
             line("image-1", [{"type": "image_url", "image_url": {"url": image}},
                              {"type": "text", "text": "Describe."}]),
             line("image-2", [{"type": "image_url", "image_url": png_url()},
                              {"type": "text", "text": "Color?"}]),
             line("text-3", "Bye.", temperature=0.0, seed=3)]
    batch = submit(openai_client, lines)
    assert batch.status == "validating" and batch.metadata == {"suite": "it"}
    done = wait(openai_client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (5, 5, 0)
    out = results(openai_client, done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(x["custom_id"] for x in lines)
    for r in out:
        assert r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] >= 1
    assert done.error_file_id is None
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    assert batch.id in [b.id for b in openai_client.batches.list()]


def test_validation_failure_lists_every_bad_line(openai_client):
    lines = [line("ok-1", "hi"), b"{not json", line("ok-1", "duplicate id"),
             {**line("bad-url", "hi"), "url": "/v1/embeddings"},
             line("bad-body", "hi", temperature=9), {"method": "POST"},
             line("bad-model", "hi") | {"body": {"model": "gpt-4o", "messages": []}}]
    batch = submit(openai_client, lines)
    done = wait(openai_client, batch.id)
    assert done.status == "failed" and done.failed_at
    errors = {e.line: e for e in done.errors.data}
    assert errors[2].code == "invalid_json"
    assert errors[3].code == "duplicate_custom_id" and "line 1" in errors[3].message
    assert errors[4].code == "invalid_url"
    assert errors[5].code == "invalid_body" and errors[5].param == "body.temperature"
    assert errors[6].code == "missing_custom_id"
    assert 1 not in errors
    assert done.request_counts.completed == 0 and done.output_file_id is None


def test_runtime_line_errors_go_to_the_error_file(openai_client):
    lines = [line("good-1", "hi"),
             line("broken-image", [{"type": "image_url",
                                    "image_url": data_url(b"not an image at all")}]),
             line("too-long", "hi", max_tokens=5000), line("good-2", "hello")]
    done = wait(openai_client, submit(openai_client, lines).id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    good = {r["custom_id"] for r in results(openai_client, done.output_file_id)}
    bad = {r["custom_id"]: r for r in results(openai_client, done.error_file_id)}
    assert good == {"good-1", "good-2"} and set(bad) == {"broken-image", "too-long"}
    assert bad["broken-image"]["response"]["status_code"] == 400
    assert "decodable" in bad["broken-image"]["response"]["body"]["error"]["message"]
    assert bad["too-long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"


def test_batches_belong_to_their_key(openai_client, server):
    batch = submit(openai_client, [line("a", "hi")])
    other = openai.OpenAI(base_url=f"{server['base']}/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in other.batches.list()]
    with pytest.raises(openai.BadRequestError):  # another key's input file is not usable
        other.batches.create(input_file_id=batch.input_file_id,
                             endpoint="/v1/chat/completions", completion_window="24h")
    wait(openai_client, batch.id)


def test_create_errors(openai_client):
    f = openai_client.files.create(file=("in.jsonl", io.BytesIO(jsonl([line("a", "hi")]))),
                                   purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        openai_client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                                     completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        openai_client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                     completion_window="1h")
    with pytest.raises(openai.BadRequestError, match="input_file_id"):
        openai_client.batches.create(input_file_id="file-" + "0" * 32,
                                     endpoint="/v1/chat/completions", completion_window="24h")


def test_cancel_keeps_finished_results(openai_client):
    lines = [line(f"c{i}", "Write a long story.", max_tokens=48, ignore_eos=True)
             for i in range(60)]
    batch = submit(openai_client, lines)
    wait(openai_client, batch.id, until=lambda b: b.request_counts.completed >= 4)
    cancelling = openai_client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    done = wait(openai_client, batch.id, timeout_s=120)
    assert done.status == "cancelled" and done.cancelled_at
    assert 4 <= done.request_counts.completed < 60
    out = results(openai_client, done.output_file_id)
    assert len(out) == done.request_counts.completed
    assert len({r["custom_id"] for r in out}) == len(out)
    with pytest.raises(openai.BadRequestError):
        openai_client.batches.cancel(batch.id)


def _runner_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(x.split()[0]) for x in out.splitlines() if "ServeReplica:qvq:BatchRunner" in x]


def test_runner_killed_mid_job_resumes_exactly_once(openai_client):
    lines = [line(f"k{i:03d}", "Tell me about the picture.", max_tokens=24, ignore_eos=True)
             for i in range(48)]
    batch = submit(openai_client, lines)
    wait(openai_client, batch.id, until=lambda b: b.request_counts.completed >= 8)
    pids = _runner_pids()
    assert pids, "no BatchRunner replica process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    done = wait(openai_client, batch.id, timeout_s=300)
    assert done.status == "completed", done
    assert _runner_pids() and _runner_pids() != pids  # Serve replaced the replica
    out = results(openai_client, done.output_file_id)
    ids = [r["custom_id"] for r in out]
    assert sorted(ids) == sorted(x["custom_id"] for x in lines)  # every id exactly once
    assert len(ids) == len(set(ids)) == 48
    assert done.request_counts.completed == 48
    print(f"resumed and finished {time.monotonic() - killed_at:.1f}s after SIGKILL")


def test_cli_submit_wait_download(server, tmp_path):
    import sys

    from tests.integration.conftest import API_KEY

    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl([line(f"cli-{i}", "hi") for i in range(3)]))
    env = {**os.environ, "QVQ_BASE_URL": server["base"] + "/v1", "QVQ_API_KEY": API_KEY}
    run = subprocess.run([sys.executable, "-m", "serving.cli", "batch", "submit", str(src),
                          "--wait"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed"
    assert "3 ok / 0 failed / 3" in run.stderr
    got = subprocess.run([sys.executable, "-m", "serving.cli", "batch", "download",
                          summary["id"], "-o", str(tmp_path / "out")], capture_output=True,
                         text=True, env=env, timeout=60)
    assert got.returncode == 0, got.stderr
    out = (tmp_path / "out" / f"{summary['id']}_output.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in out) == ["cli-0", "cli-1", "cli-2"]
    bad = subprocess.run([sys.executable, "-m", "serving.cli", "batch", "status",
                          "batch_" + "0" * 32], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "HTTP 404" in bad.stderr


def test_two_jobs_share_capacity(openai_client):
    first = submit(openai_client, [line(f"a{i}", "Story please.", max_tokens=24,
                                        ignore_eos=True) for i in range(24)])
    second = submit(openai_client, [line(f"b{i}", "Story please.", max_tokens=24,
                                         ignore_eos=True) for i in range(24)])
    seen_both_running = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        a = openai_client.batches.retrieve(first.id)
        b = openai_client.batches.retrieve(second.id)
        if a.request_counts.completed and b.request_counts.completed and (
                a.status != "completed" or b.status != "completed"):
            seen_both_running = True  # both progressed before either finished
        if a.status == b.status == "completed":
            break
        time.sleep(0.2)
    assert a.status == b.status == "completed"
    assert seen_both_running, "one job ran to the end before the other started"
