"""`qvq batch run` (the chart's RayJob entrypoint): a batch file from S3 through the whole app on
a Ray cluster of its own, real engine, results owned by the job's key in the shared store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import yaml

from serving.config import S3Config
from serving.storage.s3 import make_client
from tests.conftest import ROOT
from tests.integration.conftest import free_port


def test_batch_run_deploys_runs_and_leaves_results_in_the_store(tmp_path, tiny_model_dir,
                                                                 s3_server):
    s3 = make_client(S3Config(**s3_server.s3_config(bucket="qvq-test")))
    owner = f"nightly-{uuid.uuid4().hex[:8]}"
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "qvq-72b-preview", "max_tokens": 4, "temperature": 0,
                       "messages": [{"role": "user", "content": f"Count to {i}."}]}}
             for i in range(3)]
    key = f"batch-inputs/{owner}.jsonl"
    s3.put_object(Bucket="qvq-test", Key=key,
                  Body="\n".join(json.dumps(line) for line in lines).encode())

    config = yaml.safe_load((ROOT / "configs" / "local-cpu.yaml").read_text())
    config["model"]["path"] = str(tiny_model_dir)
    config["data_dir"] = str(ROOT / ".qvq")
    config["ray"] = {"num_cpus": 4}
    config["auth"] = {"api_keys_env": None}  # only the job's one-time key is accepted
    config["batch"] = {"chunk_size": 2, "poll_interval_s": 0.5}
    config["storage"] = {"backend": "s3", "s3": s3_server.s3_config(bucket="qvq-test")}
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(config))

    proc = subprocess.run(
        [sys.executable, "-m", "serving.cli", "batch", "run", "--config", str(path),
         "--input", f"s3://qvq-test/{key}", "--owner", owner, "--address", "local",
         "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["request_counts"] == {"total": 3, "completed": 3, "failed": 0}

    # the output file sits in the shared store under the owner's key id
    listed = s3.list_objects_v2(Bucket="qvq-test", Prefix=f"files/{owner}/")
    names = [o["Key"] for o in listed.get("Contents", [])]
    output = [n for n in names if n.endswith(result["output_file_id"])]
    assert output, names
    body = s3.get_object(Bucket="qvq-test", Key=output[0])["Body"].read().decode()
    ids = sorted(json.loads(line)["custom_id"] for line in body.splitlines() if line)
    assert ids == ["req-0", "req-1", "req-2"]


def test_batch_run_fails_fast_on_a_missing_input(tmp_path, s3_server):
    config = {"model": {"path": "/nonexistent"},
              "storage": {"backend": "s3", "s3": s3_server.s3_config(bucket="qvq-test")}}
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "serving.cli", "batch", "run", "--config", str(path),
         "--input", "s3://qvq-test/batch-inputs/does-not-exist.jsonl", "--address", "local"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "does-not-exist.jsonl: S3 said NoSuchKey" in proc.stderr
