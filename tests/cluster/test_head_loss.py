"""The head pod lost (its GCS, Serve's controller, here also Serve's proxy) and restarted on
the same address, as Kubernetes restarts the head container: without GCS fault tolerance and
with it (the chart's ``gcsFaultTolerance``, a real Redis on 127.0.0.1; the cluster gets the
environment KubeRay derives from the rendered ``gcsFaultToleranceOptions``).

Without it the new GCS knows nothing of the cluster: the worker nodes' raylets are refused and
end, their pods restart, and KubeRay submits ``serveConfigV2`` again to a cluster with no
applications; every replica, the generator's engine included, starts from scratch. With it the
new GCS reloads the cluster's tables from Redis, the workers reconnect, Serve's controller
comes back with its applications, and the generator replica that was serving before is the one
serving after (same process: no engine reload).

One thing differs from a Kubernetes cluster: on one host Serve's proxy runs on the head only
(serving/kube/localcluster.py), so here no request is answered while the head is away; with
the chart's proxies on every node, the workers' proxies keep answering then.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from serving.kube import chart
from tests.cluster.chart_cluster import CI_VALUES, deployed, image_chat, wait_for
from tests.redis_server import RedisServer

GENERATOR = "QVQGenerator"


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def chart_values(redis_address: str | None) -> dict:
    values = chart.load_values(CI_VALUES / "tiny-gpu-group-values.yaml")
    if redis_address:
        values["gcsFaultTolerance"] = {"enabled": True, "redisAddress": redis_address}
    return values


def generator_pids(cluster) -> list[int]:
    apps = cluster.serve_details().get("applications") or {}
    return [r.get("pid") for app in apps.values()
            for name, dep in (app.get("deployments") or {}).items() if name == GENERATOR
            for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"]


def answered(base: str, seed: int) -> bool:
    try:
        return image_chat(base, seed, max_tokens=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("fault_tolerant", [False, True],
                         ids=["without-gcs-ft", "with-gcs-ft"])
def test_losing_the_head(fault_tolerant, redis, tiny_model_dir, s3_server, tmp_path_factory):
    values = chart_values(redis.address if fault_tolerant else None)
    tmp = tmp_path_factory.mktemp("head-loss")
    with deployed(values, model_dir=tiny_model_dir, s3_server=s3_server, tmp=tmp) as running:
        cluster, base = running["cluster"], running["base"]
        assert running["rayservice"]["spec"]["rayClusterConfig"].get(
            "gcsFaultToleranceOptions", {}).get("redisAddress") == (
            redis.address if fault_tolerant else None)
        assert answered(base, seed=1)
        before = generator_pids(cluster)
        cluster.kill("head")
        killed_at = time.monotonic()
        while_down = "answered" if answered(base, seed=2) else "refused (no proxy)"
        time.sleep(5)  # the pod's restart back-off, at its shortest
        cluster.restart_head()
        head_back_s = time.monotonic() - killed_at
        result = {"gcs_fault_tolerance": fault_tolerant, "request_while_down": while_down,
                  "head_back_after_kill_s": round(head_back_s, 1)}
        if not fault_tolerant:
            workers = [s.name for s in running["shapes"] if s.group != "head"]
            result["workers_ended_after_kill_s"] = round(head_back_s + wait_for(
                "the workers refused by the new GCS",
                lambda: set(workers) <= set(cluster.exited()), 180), 1)
            assert sorted(cluster.relaunch_exited()) == sorted(workers)  # the pods restart
            cluster.deploy(running["config"])  # KubeRay: a cluster without the apps
        wait_for("an image chat answered again", lambda: answered(base, seed=3), 600)
        result["serving_again_after_kill_s"] = round(time.monotonic() - killed_at, 1)
        after = generator_pids(cluster)
        result["generator_kept_its_process"] = bool(before) and after == before
        print("head loss:", json.dumps(result))
        assert while_down.startswith("refused")
        if fault_tolerant:
            assert not cluster.exited(), cluster.exited()  # the workers reconnected
            assert after == before, (before, after)  # the same engine, never reloaded
        else:
            assert after and set(after).isdisjoint(before), (before, after)
