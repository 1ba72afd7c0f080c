"""The chart's RayService on a Ray cluster of several nodes on this machine, for the cluster
tests: render it, start its nodes (or its head and the autoscaler), deploy its own
``serveConfigV2`` through Serve's REST API as KubeRay submits it, and talk to it."""

from __future__ import annotations

import contextlib
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai

from serving.config import S3Config
from serving.kube import chart, localcluster
from serving.storage.s3 import make_client
from tests.conftest import ROOT
from tests.images import data_url, encode, photo

CI_VALUES = ROOT / "helm" / "qvq-serving" / "ci"
MODEL = "qvq-72b-preview"
API_KEY = "cluster-test-key"
BUCKET = "qvq-cluster"


def rendered_rayservice(values: pathlib.Path | dict[str, Any]) -> dict[str, Any]:
    """The RayService the chart renders from a values file (or values already loaded)."""
    if isinstance(values, pathlib.Path):
        values = chart.load_values(values)
    objects = chart.objects(chart.render(values))
    return next(o for o in objects if o["kind"] == "RayService")


@contextlib.contextmanager
def deployed(values: pathlib.Path | dict[str, Any], *, model_dir: pathlib.Path, s3_server,
             tmp: pathlib.Path, autoscale: bool = False) -> Iterator[dict[str, Any]]:
    """The chart of ``values`` running: every pod a node, or (``autoscale``) the head alone
    with the in-tree autoscaler, which starts each group's minimum and more on demand. The
    cluster is gone, every process of it, when the block ends."""
    s3 = s3_server.s3_config(bucket=BUCKET)
    with contextlib.suppress(Exception):  # already there from an earlier module
        make_client(S3Config(**s3)).create_bucket(Bucket=BUCKET)
    rayservice = rendered_rayservice(values)
    shapes = localcluster.node_shapes(rayservice)
    port = localcluster.free_port()
    head_env, worker_env = localcluster.gcs_fault_tolerance_env(rayservice)
    cluster = localcluster.LocalRayCluster(
        shapes[:1] if autoscale else shapes, log_dir=tmp / "nodes",
        env={"QVQ_CLUSTER_KEYS": f"ci:{API_KEY}"}, head_env=head_env, worker_env=worker_env,
        autoscaling=localcluster.autoscaling_config(rayservice) if autoscale else None)
    try:
        cluster.start()
        config = localcluster.local_serve_config(
            rayservice, model_dir=str(model_dir), port=port, data_dir=str(tmp / "data"),
            storage={"backend": "s3", "s3": s3}, api_keys_env="QVQ_CLUSTER_KEYS")
        cluster.deploy(config)
        cluster.wait_until_running([app["name"] for app in config["applications"]])
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/health", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "no /health after the apps were RUNNING"
            time.sleep(2)
        yield {"cluster": cluster, "base": base, "shapes": shapes, "rayservice": rayservice,
               "config": config,
               "client": openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY,
                                       max_retries=0, timeout=120)}
    finally:
        cluster.stop()
        assert not localcluster.leftover_processes(cluster.temp_dir), "stray Ray processes"


def image_chat(base: str, seed: int, max_tokens: int = 4, images: int = 1,
               size: tuple[int, int] = (640, 480)) -> httpx.Response:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(
            encode(photo(*size, seed=seed + i), "JPEG"), "image/jpeg")}}
        for i in range(images)]
    return httpx.post(f"{base}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": MODEL, "max_tokens": max_tokens, "messages": [
                          {"role": "user", "content": [
                              *parts, {"type": "text", "text": "What is this?"}]}]})


def wait_for(what: str, check, timeout_s: float = 300) -> float:
    """Seconds until ``check()`` is true (polled every second)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(1)
    return time.monotonic() - started


def batch_of(client: openai.OpenAI, lines: int, max_tokens: int = 48):
    jsonl = "".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "max_tokens": max_tokens, "ignore_eos": True,
                 "loop_guard": "off", "messages": [{"role": "user", "content": f"Line {i}."}]}})
        + "\n" for i in range(lines))
    upload = client.files.create(file=("in.jsonl", jsonl.encode()), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")


def wait_batch(client: openai.OpenAI, batch_id: str, until=None, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired") \
                or (until is not None and until(batch)):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {batch.status}"
        time.sleep(1)


def output_ids(client: openai.OpenAI, batch) -> list[str]:
    return [json.loads(line)["custom_id"]
            for line in client.files.content(batch.output_file_id).read().splitlines() if line]
