"""Serve's replica autoscaling and Ray's node autoscaling together, for real on this machine:
the chart's RayService (helm/qvq-serving/ci/tiny-autoscaling-values.yaml) with KubeRay's
in-tree autoscaler as KubeRay would configure it (Ray's own translation of the RayCluster
spec: node types, min/max workers, idle timeout) and Ray's fake multi-node provider, which
starts a raylet on this machine where KubeRay would create a pod
(serving/kube/localcluster.py). The cluster starts with the head alone; the autoscaler brings
up each group's minimum.

Measured and printed (``-s``), written into loadtest/README.md ("Autoscaling across nodes"):
seconds from a load step to each stage of a scale-out (Serve's decision, the autoscaler's,
the new node up, the replica started on it, its engine ready, the first request it served),
and of the scale-in after the load (Serve's decision, the replica gone, the node gone); every
request sent meanwhile must succeed. And a GPU node lost at the group's minimum, replaced by
the autoscaler alone.
"""

from __future__ import annotations

import json
import pathlib
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from serving.kube import localcluster
from tests.cluster.chart_cluster import (
    API_KEY,
    CI_VALUES,
    MODEL,
    batch_of,
    deployed,
    output_ids,
    wait_batch,
    wait_for,
)
from tests.images import data_url, encode, photo

GENERATOR = "QVQGenerator"
PREPROCESSOR = "ImagePreprocessor"
GROUP_OF = {GENERATOR: "gpu-workers", PREPROCESSOR: "cpu-workers"}
BATCH_LINES = 300
IMAGES_PER_REQUEST = 4


@pytest.fixture(scope="module")
def scaling_cluster(tiny_model_dir, s3_server, tmp_path_factory):
    with deployed(CI_VALUES / "tiny-autoscaling-values.yaml", model_dir=tiny_model_dir,
                  s3_server=s3_server, tmp=tmp_path_factory.mktemp("autoscaling"),
                  autoscale=True) as running:
        yield running


@dataclass
class Snapshot:
    at: float  # time.time()
    replicas: dict[str, list[dict[str, Any]]]  # deployment -> [{id, state, node, log}]
    nodes: dict[str, list[str]]  # group -> node names
    started: dict[str, float]  # node name -> when it registered with the GCS


@dataclass
class Timeline:
    """Which replica runs on which node, seen about once a second from Serve's REST API and
    Ray's state API; when things happened comes from the cluster's own records, to the
    millisecond: Serve's controller log (its scaling decisions), the autoscaler's monitor log
    (nodes added and removed), each replica's log (started, initialized, each answer,
    shutdown) and each node's registration time."""

    cluster: localcluster.LocalRayCluster
    snapshots: list[Snapshot] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def logs(self) -> pathlib.Path:
        return self.cluster.temp_dir / "session_latest" / "logs"

    def start(self) -> Timeline:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(1):
            try:
                self.snapshots.append(self._snapshot())
            except Exception as exc:  # noqa: BLE001 - a busy dashboard; the next second counts
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _snapshot(self) -> Snapshot:
        nodes = self.cluster.alive_nodes()
        by_id = {node["node_id"]: name for name, node in nodes.items()}
        replicas = {}
        for app in (self.cluster.serve_details().get("applications") or {}).values():
            for name, dep in (app.get("deployments") or {}).items():
                replicas[name] = [{"id": r["replica_id"], "state": r["state"],
                                   "node": by_id.get(r.get("node_id") or "", ""),
                                   "log": r.get("log_file_path")}
                                  for r in dep.get("replicas") or []]
        groups: dict[str, list[str]] = {}
        for name, node in nodes.items():
            groups.setdefault(node["labels"][localcluster.GROUP_LABEL], []).append(name)
        return Snapshot(time.time(), replicas, groups,
                        {name: node["start_time_ms"] / 1000 for name, node in nodes.items()})

    def latest(self) -> Snapshot:
        return self.snapshots[-1] if self.snapshots else Snapshot(0, {}, {}, {})

    def new_nodes(self, group: str, minimum_nodes: set[str]) -> dict[str, float]:
        """Nodes of ``group`` seen that were not there at the start, with their start times."""
        return {name: snap.started[name] for snap in self.snapshots
                for name in snap.nodes.get(group, []) if name not in minimum_nodes}

    def replica_logs(self, deployment: str, on_nodes: set[str] | None = None) -> list[str]:
        """The log texts of every replica of ``deployment`` seen (on one of ``on_nodes``)."""
        paths = {r["log"] for snap in self.snapshots for r in snap.replicas.get(deployment, [])
                 if r["log"] and (on_nodes is None or r["node"] in on_nodes)}
        return [_read(self.logs / path.lstrip("/")) for path in sorted(paths)]

    def controller_log(self) -> str:
        return "".join(_read(p) for p in sorted(self.logs.glob("serve/controller_*.log")))

    def monitor_log(self) -> str:
        return _read(self.logs / "monitor.log")


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def stamps(text: str, *needles: str) -> list[float]:
    """When each log line holding all ``needles`` was written (local time, as Ray and Serve
    write it)."""
    found = []
    for line in text.splitlines():
        if all(n in line for n in needles) and (m := STAMP.search(line)):
            found.append(time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S"))
                         + int(m[2]) / 1000)
    return found


LAUNCHER = re.compile(r"(NodeLauncher\d+): (Got \d+ nodes to launch|Launching \d+ nodes, "
                      r"type (\S+)\.)")


def launches(monitor_log: str, group: str) -> list[float]:
    """When the autoscaler decided to launch a node of ``group``: its launcher thread's
    ``Got N nodes to launch`` line (the type is only named in the ``Launching`` line that
    thread writes once the node was created)."""
    decided: dict[str, float] = {}
    found = []
    for line in monitor_log.splitlines():
        if (m := LAUNCHER.search(line)) and (at := stamps(line, m[1])):
            if m[3] is None:
                decided[m[1]] = at[0]
            elif m[3] == group and m[1] in decided:
                found.append(decided.pop(m[1]))
    return found


def after(since: float, times: list[float]) -> float | None:
    """Seconds from ``since`` to the first of ``times`` at or after it."""
    later = [t for t in times if t >= since]
    return round(min(later) - since, 1) if later else None


def running_on(snap: Snapshot, deployment: str, nodes: set[str]) -> list[dict[str, Any]]:
    return [r for r in snap.replicas.get(deployment, [])
            if r["node"] in nodes and r["state"] == "RUNNING"]


def scale_out_stages(timeline: Timeline, step_at: float, deployment: str,
                     minimum_nodes: set[str]) -> dict[str, float | None]:
    """Seconds from the load step to each stage of one more replica of ``deployment`` on a
    node of its group that was not there before: Serve's decision, the autoscaler's, the node
    registered, the replica's actor started on it, the replica initialized (for the generator:
    its engine loaded and ready), its first answer."""
    group = GROUP_OF[deployment]
    new = timeline.new_nodes(group, minimum_nodes)
    logs = "".join(timeline.replica_logs(deployment, set(new)))
    stages = {
        "serve_decision_s": after(step_at, stamps(
            timeline.controller_log(), f"Upscaling Deployment(name='{deployment}'")),
        "node_requested_s": after(step_at, launches(timeline.monitor_log(), group)),
        "node_up_s": after(step_at, list(new.values())),
        "replica_started_s": after(step_at, stamps(logs, "Started initializing replica")),
        "replica_ready_s": after(step_at, stamps(logs, "Finished initializing replica")),
    }
    if deployment == GENERATOR:  # one log line per answer (the preprocessor's are off)
        stages["first_request_served_s"] = after(step_at, stamps(logs, " done: "))
    return stages


def scale_in_stages(timeline: Timeline, since: float, deployment: str) -> dict[str, float | None]:
    """Seconds from ``since`` (the load falling) to Serve's decision, the removed replica's
    end (after its requests finished) and its node's removal by the autoscaler."""
    return {
        "serve_decision_s": after(since, stamps(
            timeline.controller_log(), f"Downscaling Deployment(name='{deployment}'")),
        "replica_gone_s": after(since, stamps("".join(timeline.replica_logs(deployment)),
                                              "Graceful shutdown complete")),
        "node_gone_s": after(since, stamps(
            timeline.monitor_log(), "Removing", f"nodes of type {GROUP_OF[deployment]}")),
    }


class Load:
    """Clients sending requests back to back until told to stop: streamed text answers (the
    generator's load) and image-heavy short answers (the preprocessor's). Every outcome is
    kept; a failure is anything but a 200 with a complete answer."""

    def __init__(self, base: str):
        self.base = base
        # photos drawn once (drawing is slow and holds the GIL the clients share); each
        # request sends them with a patch of its own, so no image is a cache hit
        self._photos = [photo(1280, 960, seed=seed) for seed in range(IMAGES_PER_REQUEST)]
        self.outcomes: list[tuple[float, str, str]] = []  # (time, kind, "ok" or what failed)
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, clients: int) -> None:
        for i in range(clients):
            stop = threading.Event()
            thread = threading.Thread(target=self._client, args=(kind, i, stop), daemon=True)
            thread.start()
            self._threads.append((thread, stop))

    def reduce_to(self, clients: int) -> None:
        for _, stop in self._threads[clients:]:
            stop.set()
        for thread, _ in self._threads[clients:]:
            thread.join(timeout=300)
        self._threads = self._threads[:clients]

    def stop(self) -> None:
        self.reduce_to(0)

    def failures(self) -> list[tuple[float, str, str]]:
        return [o for o in self.outcomes if o[2] != "ok"]

    def _client(self, kind: str, index: int, stop: threading.Event) -> None:
        seed = index * 1000
        while not stop.is_set():
            seed += 1
            try:
                outcome = self._stream() if kind == "stream" else self._images(seed)
            except httpx.HTTPError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.outcomes.append((time.time(), kind, outcome))

    def _stream(self) -> str:
        body = {"model": MODEL, "max_tokens": 160, "stream": True, "ignore_eos": True,
                "loop_guard": "off", "messages": [{"role": "user", "content": "Go on."}]}
        last = ""
        with httpx.stream("POST", f"{self.base}/v1/chat/completions", json=body, timeout=300,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
            if resp.status_code != 200:
                return f"{resp.status_code}: {resp.read()[:300]!r}"
            for line in resp.iter_lines():
                if line.startswith('data: {"error"'):
                    return f"error event: {line[:300]}"
                last = line or last
        return "ok" if last == "data: [DONE]" else f"stream ended without [DONE]: {last[:200]}"

    def _images(self, seed: int) -> str:
        rng = random.Random(seed)
        parts = []
        for base in self._photos:
            image = base.copy()
            x, y = rng.randrange(1200), rng.randrange(900)
            image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 64, y + 64))
            parts.append({"type": "image_url", "image_url": {
                "url": data_url(encode(image, "JPEG", quality=90), "image/jpeg")}})
        resp = httpx.post(f"{self.base}/v1/chat/completions", timeout=300,
                          headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": MODEL, "max_tokens": 2, "messages": [{
                              "role": "user", "content": [
                                  *parts, {"type": "text", "text": "What is this?"}]}]})
        return "ok" if resp.status_code == 200 else f"{resp.status_code}: {resp.text[:300]}"


def served_on_a_new_node(timeline: Timeline, minimum_nodes: set[str]) -> bool:
    new = set(timeline.new_nodes("gpu-workers", minimum_nodes))
    return any(" done: " in log for log in timeline.replica_logs(GENERATOR, new))


def most_nodes(timeline: Timeline) -> dict[str, int]:
    return {group: max((len(s.nodes.get(group, [])) for s in timeline.snapshots), default=0)
            for group in sorted(GROUP_OF.values())}


def at_minimum(cluster: localcluster.LocalRayCluster) -> bool:
    """One replica of each scaled role, one node of each group (whichever ones they are:
    Serve may remove the older replica, and the autoscaler then the older node)."""
    details = cluster.serve_details()
    nodes = cluster.alive_nodes()
    replicas = {name: dep.get("replicas") or []
                for app in (details.get("applications") or {}).values()
                for name, dep in (app.get("deployments") or {}).items()}
    return (all(len(replicas.get(dep, [])) == 1
                and replicas[dep][0]["state"] == "RUNNING" for dep in GROUP_OF)
            and all(len(localcluster.group_nodes(nodes, group)) == 1
                    for group in GROUP_OF.values()))


def running_replicas(cluster: localcluster.LocalRayCluster, deployment: str) -> int:
    return sum(replica["state"] == "RUNNING"
               for app in (cluster.serve_details().get("applications") or {}).values()
               for replica in ((app.get("deployments") or {}).get(deployment) or {}).get(
                   "replicas") or [])


def group_sets(cluster: localcluster.LocalRayCluster) -> set[str]:
    nodes = cluster.alive_nodes()
    return {name for group in GROUP_OF.values()
            for name in localcluster.group_nodes(nodes, group)}


def test_the_autoscaler_starts_each_groups_minimum(scaling_cluster):
    cluster = scaling_cluster["cluster"]
    nodes = cluster.alive_nodes()
    assert set(nodes) - {"head"} == group_sets(cluster)
    assert at_minimum(cluster), cluster.replica_nodes()
    placement = cluster.replica_nodes()
    assert localcluster.group_nodes(nodes, "gpu-workers") == placement[GENERATOR]


def test_a_load_step_scales_out_onto_new_nodes_and_back_in(scaling_cluster):
    """Live traffic steps from nothing to 6 streaming clients and 3 image-heavy ones: Serve
    asks for a second generator and a second preprocessor, neither fits the group's node, the
    autoscaler adds one node of each group, the new replicas serve. Then one streaming client
    stays while Serve removes the extra replicas (each finishes its streams first) and the
    autoscaler removes the idle nodes."""
    cluster, base = scaling_cluster["cluster"], scaling_cluster["base"]
    wait_for("the cluster at its minimum", lambda: at_minimum(cluster), 300)
    minimum = group_sets(cluster)
    timeline = Timeline(cluster).start()
    load = Load(base)
    step_at = time.time()
    load.add("stream", 6)
    load.add("images", 3)
    try:
        wait_for("an answer from a generator on a new GPU node",
                 lambda: served_on_a_new_node(timeline, minimum), 600)
        wait_for("a preprocessor on a new CPU node", lambda: any(
            running_on(s, PREPROCESSOR, set(s.nodes.get("cpu-workers", [])) - minimum)
            for s in timeline.snapshots), 300)
        reduced_at = time.time()
        load.reduce_to(1)
        wait_for("back to the minimum", lambda: at_minimum(cluster), 600)
        time.sleep(2)
    finally:
        load.stop()
        timeline.stop()
    result = {
        "scale_out": {dep: scale_out_stages(timeline, step_at, dep, minimum)
                      for dep in (GENERATOR, PREPROCESSOR)},
        "scale_in": {dep: scale_in_stages(timeline, reduced_at, dep)
                     for dep in (GENERATOR, PREPROCESSOR)},
        "most_nodes": most_nodes(timeline), "requests": len(load.outcomes),
        "failed": len(load.failures())}
    print("load step:", json.dumps(result), timeline.errors[-3:])
    assert not load.failures(), load.failures()[:5]
    assert result["most_nodes"] == {"cpu-workers": 2, "gpu-workers": 2}, result
    for stages in [*result["scale_out"].values(), result["scale_in"][GENERATOR]]:
        assert all(value is not None for value in stages.values()), result
    # the preprocessor's second replica may already have gone and come back under the
    # step (image load is bursty; each scale-in was measured as it came): no scale-in left
    # to see after the load fell is not a failure


def test_a_batch_on_an_idle_cluster_scales_out_finishes_and_scales_in(scaling_cluster):
    """A batch of a few hundred lines submitted to the cluster at its minimum: the batch
    runner keeps more requests in flight than one generator's target, Serve asks for a second,
    the autoscaler adds a GPU node, the batch finishes with every line exactly once, and the
    cluster goes back to its minimum. The scaling is in the logs: Serve's controller and the
    autoscaler's monitor."""
    cluster, client = scaling_cluster["cluster"], scaling_cluster["client"]
    wait_for("the cluster at its minimum", lambda: at_minimum(cluster), 300)
    minimum = group_sets(cluster)
    timeline = Timeline(cluster).start()
    submitted_at = time.time()
    try:
        batch = batch_of(client, BATCH_LINES, max_tokens=256)
        done = wait_batch(client, batch.id, timeout_s=1200)
        finished_at = time.time()
        wait_for("back to the minimum", lambda: at_minimum(cluster), 600)
        time.sleep(2)
    finally:
        timeline.stop()
    result = {
        "batch": f"{done.status}, {done.request_counts.completed} completed, "
                 f"{done.request_counts.failed} failed",
        "finished_s": round(finished_at - submitted_at, 1),
        # all from the submission: Serve may remove the second generator while the batch's
        # last lines run on the first
        "scale_out": scale_out_stages(timeline, submitted_at, GENERATOR, minimum),
        "scale_in": scale_in_stages(timeline, submitted_at, GENERATOR),
        "most_nodes": most_nodes(timeline)}
    print("batch:", json.dumps(result), timeline.errors[-3:])
    assert done.status == "completed" and done.request_counts.failed == 0, result
    assert sorted(output_ids(client, done)) == sorted(f"line-{i}" for i in range(BATCH_LINES))
    assert result["most_nodes"]["gpu-workers"] == 2, result
    # the new generator answered batch lines, and the scaling is in Serve's and the
    # autoscaler's logs (what `scale_out_stages` read)
    assert all(v is not None for v in result["scale_out"].values()), result
    assert all(v is not None for v in result["scale_in"].values()), result


def test_a_lost_gpu_node_is_replaced_by_the_autoscaler(scaling_cluster):
    """The GPU pod at the group's minimum is lost, with nothing but the autoscaler to replace
    it (the test tells no one). Serve loses its generator and asks for another, which fits no
    node; the autoscaler launches a GPU node for it and terminates the lost one, which it
    still counted (as idle once its resources read unused, or as "lost contact with raylet"
    once its heartbeats are overdue, whichever comes first); the generator starts there. A
    chat sent once Serve saw its generator die waits in Serve and is answered by the new one.
    Seconds from the loss to each stage, printed."""
    cluster, base = scaling_cluster["cluster"], scaling_cluster["base"]
    wait_for("the cluster at its minimum", lambda: at_minimum(cluster), 300)
    minimum = group_sets(cluster)
    nodes = cluster.alive_nodes()
    [lost] = localcluster.group_nodes(nodes, "gpu-workers")
    terminated = f"Terminating the node with id {nodes[lost]['node_id']}"
    timeline = Timeline(cluster).start()
    try:
        lost_at = time.time()
        cluster.kill_autoscaled(lost)
        # sent once Serve's controller has seen the replica die (the proxy learns it from
        # the controller): a request routed to the dead replica before that is the in-flight
        # case, measured in tests/cluster/test_chart_topology.py
        wait_for("Serve to see its generator gone",
                 lambda: running_replicas(cluster, GENERATOR) == 0, 180)
        replica_gone_at = time.time()
        sent = httpx.post(f"{base}/v1/chat/completions", timeout=600,
                          headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": MODEL, "max_tokens": 8,
                                "messages": [{"role": "user", "content": "hi"}]})
        answered_at = time.time()
        wait_for("the lost node terminated by the autoscaler", lambda: stamps(
            timeline.monitor_log(), terminated), 180)
        wait_for("back to the minimum", lambda: at_minimum(cluster), 300)
        time.sleep(2)
    finally:
        timeline.stop()
    new = timeline.new_nodes("gpu-workers", minimum)
    logs = "".join(timeline.replica_logs(GENERATOR, set(new)))
    monitor = timeline.monitor_log()
    gone = [s.at for s in timeline.snapshots if lost not in s.nodes.get("gpu-workers", [])]
    stages = {
        "node_dead_in_ray_s": after(lost_at, gone),
        "serve_saw_replica_gone_s": round(replica_gone_at - lost_at, 1),
        "node_requested_s": after(lost_at, launches(monitor, "gpu-workers")),
        "lost_node_terminated_s": after(lost_at, stamps(monitor, terminated)),
        "new_node_up_s": after(lost_at, list(new.values())),
        "replica_ready_s": after(lost_at, stamps(logs, "Finished initializing replica")),
        "request_answered_s": round(answered_at - lost_at, 1)}
    print("GPU node lost, replaced by the autoscaler:", json.dumps({
        "lost": lost, "replacement": sorted(new), "stages": stages,
        "terminated_as": [line.rsplit("(", 1)[-1].rstrip(").") for line in
                          monitor.splitlines() if terminated in line],
        "request_sent_after_the_loss": sent.status_code}), timeline.errors[-3:])
    assert sent.status_code == 200, sent.text
    assert len(new) == 1, new
    assert all(value is not None for value in stages.values()), stages
    assert cluster.replica_nodes()[GENERATOR] == sorted(new)
