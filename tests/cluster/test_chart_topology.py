"""The chart's Ray topology, for real, on this machine: one Ray node per pod of the rendered
RayService (helm/qvq-serving/ci/tiny-gpu-group-values.yaml: a head with 0 CPUs, a CPU worker
group advertising ``qvq-cpu-worker``, a GPU worker group advertising one GPU per pod), and the
chart's own ``serveConfigV2`` deployed through Serve's REST API as KubeRay submits it
(serving/kube/localcluster.py says what one host changes: ports, proxy on the head only).

Node resources come from the rendered chart, so the test breaks when chart and code disagree.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest

from serving.kube import localcluster
from tests.cluster.chart_cluster import (
    API_KEY,
    CI_VALUES,
    MODEL,
    batch_of,
    deployed,
    image_chat,
    output_ids,
    wait_batch,
    wait_for,
)
from tests.images import data_url, encode, photo

BATCH_LINES = 24
CPU_ROLES = {"Router", "ImagePreprocessor", "BatchRunner", "RateLimiter"}


@pytest.fixture(scope="module")
def chart_cluster(tiny_model_dir, s3_server, tmp_path_factory):
    with deployed(CI_VALUES / "tiny-gpu-group-values.yaml", model_dir=tiny_model_dir,
                  s3_server=s3_server, tmp=tmp_path_factory.mktemp("chart-cluster")) as running:
        yield running


def test_nodes_have_the_charts_resources(chart_cluster):
    nodes = chart_cluster["cluster"].alive_nodes()
    assert set(nodes) == {s.name for s in chart_cluster["shapes"]}
    for shape in chart_cluster["shapes"]:
        total = nodes[shape.name]["resources_total"]
        assert total.get("CPU", 0) == shape.num_cpus
        assert total.get("GPU", 0) == shape.num_gpus
        for key, value in shape.resources.items():
            assert total[key] == value
    assert nodes["head"]["resources_total"].get("CPU", 0) == 0
    assert nodes["cpu-workers-0"]["resources_total"]["qvq-cpu-worker"] > 0
    assert nodes["gpu-workers-0"]["resources_total"]["GPU"] == 1


def test_replicas_land_on_their_groups(chart_cluster):
    placement = chart_cluster["cluster"].replica_nodes()
    assert placement.get("QVQGenerator"), placement
    assert {node.rsplit("-", 1)[0] for node in placement["QVQGenerator"]} == {"gpu-workers"}
    for role in CPU_ROLES & set(placement):
        assert {node.rsplit("-", 1)[0] for node in placement[role]} == {"cpu-workers"}, role
    assert {"Router", "ImagePreprocessor"} <= set(placement)
    assert not any("head" in nodes for nodes in placement.values())


def test_chat_with_an_image_crosses_nodes(chart_cluster):
    client = chart_cluster["client"]
    image = data_url(encode(photo(640, 480, seed=3), "JPEG"), "image/jpeg")
    done = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                     {"type": "text", "text": "What is this?"}]}])
    assert done.usage.prompt_tokens > 100  # the image's visual tokens reached the engine
    text = client.chat.completions.create(model=MODEL, max_tokens=4,
                                          messages=[{"role": "user", "content": "hi"}])
    assert text.usage.completion_tokens >= 1
    print(json.dumps(chart_cluster["cluster"].replica_nodes()))


def received_chunks(metrics_text: str) -> float:
    """Object chunks a node's object manager received from other nodes, all kinds summed."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("ray_object_manager_received_chunks"))


def test_pixels_cross_nodes_through_the_object_store(chart_cluster):
    """The preprocessor (CPU node) hands the resized pixels to the generator (GPU node) as a
    Ray object: the GPU node's object manager receives its chunks."""
    cluster = chart_cluster["cluster"]
    before = received_chunks(cluster.metrics("gpu-workers-0"))
    assert image_chat(chart_cluster["base"], seed=21).status_code == 200
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while (after := received_chunks(cluster.metrics("gpu-workers-0"))) <= before:
        assert time.monotonic() < deadline, "the GPU node received no object chunks"
        time.sleep(2)
    assert after > before


def test_kubectl_status_reports_the_live_cluster(chart_cluster):
    from serving.kube.plugin import render_status

    report = localcluster.kube_status(chart_cluster["cluster"], chart_cluster["rayservice"])
    active = report["clusters"]["active"]
    assert {name: app["status"] for name, app in active["applications"].items()} == {
        "qvq": "RUNNING", "qvq-chat": "RUNNING"}
    assert active["applications"]["qvq-chat"]["deployments"]["QVQGenerator"]["status"] \
        == "HEALTHY"
    groups = active["groups"]
    assert (groups["cpu-workers"]["running"], groups["gpu-workers"]["running"]) == (1, 1)
    assert report["gpusInUse"] == 1
    text = render_status(report)
    assert "gpu-workers" in text and "QVQGenerator" in text


def across_replacement(chart_cluster, group: str, name: str, killed_at: float,
                       seed: int) -> tuple[str, float]:
    """An image chat sent while ``group`` has no node, then a replacement pod of the group
    joins (KubeRay recreates a lost pod; here the test adds the node): how that request
    ended, and the seconds from the loss until the new node was up."""
    shape = next(s for s in chart_cluster["shapes"] if s.group == group)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent_at = time.monotonic()
        waiting = pool.submit(image_chat, chart_cluster["base"], seed)
        chart_cluster["cluster"].add(localcluster.NodeShape(
            name, group, shape.num_cpus, shape.num_gpus, shape.resources))
        node_up = time.monotonic() - killed_at
        try:
            outcome = str(waiting.result(timeout=600).status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
    return f"{outcome} after {time.monotonic() - sent_at:.1f} s", node_up


def test_losing_the_gpu_node_then_a_replacement_node(chart_cluster):
    """The GPU pod dies mid-stream. Measured, and printed: how the stream ends for its client
    and when; a request sent while no generator exists waits in Serve for one (it is not
    refused) and is answered once a replacement pod has joined (KubeRay recreates the pod;
    here the test adds the node) and Serve has started the generator on it."""
    cluster, base = chart_cluster["cluster"], chart_cluster["base"]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": MODEL, "max_tokens": 3000, "stream": True, "ignore_eos": True,
            "loop_guard": "off", "messages": [{"role": "user", "content": "Go on."}]}
    client = chart_cluster["client"]
    batch = batch_of(client, BATCH_LINES)  # runs across the loss
    wait_batch(client, batch.id, until=lambda b: b.request_counts
               and b.request_counts.completed >= 2)
    chunks, stream_end = 0, "done"
    killed_at = None
    in_flight_pool = concurrent.futures.ThreadPoolExecutor(1)
    in_flight = in_flight_pool.submit(httpx.post, f"{base}/v1/chat/completions", headers=headers,
                                      timeout=600, json={**body, "stream": False,
                                                         "max_tokens": 1200})
    try:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers,
                          timeout=60) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                chunks += 1
                if chunks == 5:
                    cluster.kill("gpu-workers-0")
                    killed_at = time.monotonic()
                if line.startswith('data: {"error"'):
                    stream_end = "error event"
            if stream_end == "done":
                stream_end = "closed without [DONE]" if line != "data: [DONE]" else "done"
    except httpx.ReadTimeout:
        stream_end = "no byte for 60 s (client timeout)"
    except httpx.HTTPError as exc:
        stream_end = f"connection error ({type(exc).__name__})"
    stream_ended_s = time.monotonic() - killed_at
    assert stream_end != "done"

    outcome, node_up = across_replacement(chart_cluster, "gpu-workers", "gpu-workers-1",
                                          killed_at, seed=8)
    assert outcome.startswith("200 "), outcome
    # The non-streamed request ends one of two ways, both recorded: the lost generator was
    # working on it (Serve's plain-text 500 right after the loss), or it still waited in
    # Serve's queue behind the batch's lines (answered by the replacement's generator). Its
    # result is read only now: in the second case it needs the replacement node.
    try:
        answer = in_flight.result(timeout=600)
        non_streamed = f"{answer.status_code} {answer.headers.get('content-type')} " \
                       f"{answer.text[:80]!r}"
        assert answer.status_code in (200, 500), non_streamed
        if answer.status_code == 200:
            assert answer.json()["usage"]["completion_tokens"] == 1200
    except httpx.HTTPError as exc:
        non_streamed = f"connection error ({type(exc).__name__})"
    non_streamed += f" {time.monotonic() - killed_at:.1f} s after the kill"
    in_flight_pool.shutdown()
    assert cluster.replica_nodes()["QVQGenerator"] == ["gpu-workers-1"]
    done = wait_batch(client, batch.id)
    ids = output_ids(client, done)
    print("GPU node loss:", json.dumps({
        "stream": stream_end, "stream_ended_after_kill_s": round(stream_ended_s, 1),
        "non_streamed_in_flight": non_streamed,
        "replacement_node_up_after_kill_s": round(node_up, 1),
        "request_sent_while_down": outcome,
        "batch_across_the_loss": f"{done.status}, {done.request_counts.completed} completed, "
                                 f"{done.request_counts.failed} failed"}))
    assert done.status == "completed" and done.request_counts.failed == 0
    assert sorted(ids) == sorted(f"line-{i}" for i in range(BATCH_LINES))  # each exactly once


def test_losing_the_cpu_node_then_a_replacement_node(chart_cluster):
    """The CPU pod (router, preprocessor, batch runner) dies: text chat, served by the
    generator's own ingress on the GPU node, goes on; an image chat needs the preprocessor,
    and waits for (or is refused until) a replacement pod. Measured and printed."""
    cluster, base = chart_cluster["cluster"], chart_cluster["base"]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    cluster.kill("cpu-workers-0")
    killed_at = time.monotonic()
    text = httpx.post(f"{base}/v1/chat/completions", headers=headers, timeout=120,
                      json={"model": MODEL, "max_tokens": 2,
                            "messages": [{"role": "user", "content": "hi"}]})
    text_s = time.monotonic() - killed_at
    image_outcome, node_up = across_replacement(chart_cluster, "cpu-workers",
                                                "cpu-workers-1", killed_at, seed=6)
    serving = wait_for("an image chat answered after the replacement",
                       lambda: image_chat(base, seed=7).status_code == 200)
    models = httpx.get(f"{base}/v1/models", headers=headers, timeout=30)
    print("CPU node loss:", json.dumps({
        "text_chat_while_down": f"{text.status_code} after {text_s:.1f} s",
        "image_chat_sent_while_down": image_outcome,
        "replacement_node_up_after_kill_s": round(node_up, 1),
        "images_served_again_after_kill_s": round(time.monotonic() - killed_at, 1),
        "last_wait_s": round(serving, 1)}))
    assert text.status_code == 200
    assert models.status_code == 200
    assert cluster.replica_nodes()["ImagePreprocessor"] == ["cpu-workers-1"]
