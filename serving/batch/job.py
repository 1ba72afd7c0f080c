"""One batch file through the whole app on a cluster of its own (the chart's RayJob).

``qvq batch run`` deploys the same app as the serving cluster (same config, same object
store), submits the file through the app's own HTTP API as an ordinary OpenAI batch owned by
``owner``, waits for it, and reports. The job's records, output and error files land in the
shared object store, so the serving cluster's Files/Batches API shows them to that owner's key
afterwards. The job authenticates with a one-time key added to the config for this run only.
"""

from __future__ import annotations

import pathlib
import secrets
import sys
import tempfile
import time
from typing import Any

from serving.batch.client import BatchClient
from serving.config import ApiKeyHash, ServingConfig, hash_api_key
from serving.errors import ConfigError, ServiceUnavailableError


def read_input(config: ServingConfig, source: str) -> bytes:
    """The JSONL input: ``s3://bucket/key`` (storage.s3's endpoint and credentials) or a path."""
    if not source.startswith("s3://"):
        try:
            return pathlib.Path(source).read_bytes()
        except OSError as exc:
            raise ConfigError(f"batch input {source}: {exc.strerror}") from exc
    from botocore.exceptions import BotoCoreError, ClientError

    from serving.storage.s3 import make_client

    if config.storage.s3 is None:
        raise ConfigError(f"batch input {source} is on S3 but storage.s3 is not configured")
    bucket, _, key = source[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ConfigError(f"batch input {source}: expected s3://bucket/key")
    try:
        return make_client(config.storage.s3).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ConfigError(f"batch input {source}: S3 said {code or exc}") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailableError(f"batch input {source}: S3 unreachable ({exc})") from exc


def with_job_key(config: ServingConfig, owner: str) -> tuple[ServingConfig, str]:
    """The config plus a fresh key for ``owner`` (so the job's files belong to that owner)."""
    key = secrets.token_urlsafe(32)
    auth = config.auth.model_copy(update={
        "api_keys": [*config.auth.api_keys, ApiKeyHash(id=owner, sha256=hash_api_key(key))]})
    return config.model_copy(update={"auth": auth}), key


def run_batch_job(config: ServingConfig, source: str, owner: str, *, address: str | None,
                  port: int = 8000, ready_timeout_s: float = 1800.0, out=sys.stderr
                  ) -> dict[str, Any]:
    """Deploy, submit, wait; returns the finished batch object."""
    from serving.launch import running_app

    data = read_input(config, source)  # fail before starting anything
    config, key = with_job_key(config, owner)
    # Only this job's one client calls the app, on 127.0.0.1: Serve's Python proxy does, and a
    # local HAProxy would clash with a serving stack on the same machine (its fixed ports).
    config = config.model_copy(update={
        "server": config.server.model_copy(update={"ingress": "python"})})
    with running_app(config, address=address, host="127.0.0.1", port=port,
                     log_to_driver=False) as base:
        client = BatchClient(f"{base}/v1", key)
        _wait_ready(client, ready_timeout_s)
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / (source.rsplit("/", 1)[-1] or "input.jsonl")
            path.write_bytes(data)
            batch = client.submit(path, metadata={"source": source[:512], "runner": "rayjob"})
        print(f"batch {batch['id']} submitted from {source}", file=out, flush=True)
        return client.wait(batch["id"], interval_s=config.batch.poll_interval_s, out=out)


def _wait_ready(client: BatchClient, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.models()
            return
        except Exception as exc:  # not up yet: connection refused, 503 while loading
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(f"the app did not answer /v1/models within "
                                              f"{timeout_s:.0f} s: {exc}") from exc
            time.sleep(2.0)
