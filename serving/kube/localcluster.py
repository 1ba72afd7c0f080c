"""A Ray cluster of several nodes on this machine, shaped like the chart's RayCluster.

The chart renders a RayService whose cluster has a head (``num-cpus: 0``), a CPU worker group
(advertising ``qvq-cpu-worker``) and a GPU worker group (advertising ``num-gpus``). Here each
pod becomes one Ray node on 127.0.0.1 (``ray start --block``, its own raylet), with the CPUs,
GPUs and custom resources KubeRay would give it: ``rayStartParams`` first, else the container's
CPU limit, as KubeRay does. GPUs are logical here (what the node advertises and what a
deployment asks for is what is tested; vLLM computes on the CPU). The serve config is
deployed as KubeRay submits ``serveConfigV2``: through Serve's REST API on the head's
dashboard.

What one host cannot hold is changed, and only that: every port is picked free per node (pods
each have their own network), Serve's proxy runs on the head only and is Serve's Python proxy
(HAProxy's stats ports are fixed, one per host). Every node registers and talks on loopback
only (:mod:`serving.kube.raystart`; :meth:`LocalRayCluster.alive_nodes` refuses a node that
registered elsewhere).

With the chart's autoscaler on, the head starts alone with Ray's in-tree autoscaler, configured
by Ray's own translation of the RayCluster spec (:func:`autoscaling_config`) and Ray's fake
multi-node provider: it starts each group's minimum, and a node where KubeRay would create a
pod. With GCS fault tolerance the nodes get the environment KubeRay derives from it.

``qvq dev cluster`` runs one for a person; the cluster tests use :class:`LocalRayCluster`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import yaml

NODE_LABEL = "qvq.local/node"  # each node's name, as a Ray node label
GROUP_LABEL = "qvq.local/group"  # head, cpu-workers, gpu-workers
LOOPBACK = "127.0.0.1"  # every node of a one-host cluster, and every address it uses


class LocalClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeShape:
    """One pod of the chart as a Ray node."""

    name: str  # head, cpu-workers-0, gpu-workers-1, ...
    group: str  # head or the worker group's name
    num_cpus: float
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    replicas: int
    min_replicas: int
    max_replicas: int
    shape: NodeShape  # of each pod (named after the group)


def cpu_quantity(value: str | float | int) -> float:
    """A Kubernetes CPU quantity (``4``, ``"500m"``) in cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _resources_param(raw: str) -> dict[str, float]:
    """``rayStartParams.resources``: JSON, which the chart quotes once more for the shell."""
    value: Any = raw
    while isinstance(value, str):
        value = json.loads(value)
    return {str(k): float(v) for k, v in value.items()}


def _shape(name: str, group: str, spec: dict[str, Any]) -> NodeShape:
    params = spec.get("rayStartParams") or {}
    container = spec["template"]["spec"]["containers"][0]
    limits = (container.get("resources") or {}).get("limits") or {}
    cpus = float(params["num-cpus"]) if "num-cpus" in params else cpu_quantity(limits["cpu"])
    return NodeShape(name=name, group=group, num_cpus=cpus,
                     num_gpus=float(params.get("num-gpus", 0)),
                     resources=_resources_param(params["resources"])
                     if "resources" in params else {})


def head_shape(rayservice: dict[str, Any]) -> NodeShape:
    return _shape("head", "head", rayservice["spec"]["rayClusterConfig"]["headGroupSpec"])


def worker_groups(rayservice: dict[str, Any]) -> list[WorkerGroup]:
    groups = []
    for spec in rayservice["spec"]["rayClusterConfig"].get("workerGroupSpecs") or []:
        name = spec["groupName"]
        replicas = int(spec.get("replicas", spec.get("minReplicas", 0)))
        groups.append(WorkerGroup(name=name, replicas=replicas,
                                  min_replicas=int(spec.get("minReplicas", replicas)),
                                  max_replicas=int(spec.get("maxReplicas", replicas)),
                                  shape=_shape(name, name, spec)))
    return groups


def node_shapes(rayservice: dict[str, Any]) -> list[NodeShape]:
    """The head and every worker pod the RayService starts with, as Ray nodes."""
    shapes = [head_shape(rayservice)]
    for group in worker_groups(rayservice):
        shapes += [NodeShape(f"{group.name}-{i}", group.name, group.shape.num_cpus,
                             group.shape.num_gpus, group.shape.resources)
                   for i in range(group.replicas)]
    return shapes


FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
HEAD_NODE_TYPE = "ray.head.default"  # the fake provider's name for the head's type


def autoscaling_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The autoscaler config KubeRay's in-tree autoscaler would run with for this RayService
    (Ray's own translation of the RayCluster spec: node types, their resources, min/max
    workers, idle timeout, upscaling speed), with Ray's fake multi-node provider in place of
    KubeRay's: a node it launches is a raylet on this machine instead of a pod."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cluster_spec = rayservice["spec"]["rayClusterConfig"]
    config = _derive_autoscaling_config_from_ray_cr({
        "metadata": {"name": rayservice["metadata"]["name"],
                     "namespace": rayservice["metadata"].get("namespace", "default")},
        "spec": cluster_spec})
    types = config["available_node_types"]
    types[HEAD_NODE_TYPE] = types.pop(config["head_node_type"])
    config["head_node_type"] = HEAD_NODE_TYPE
    for name, node_type in types.items():
        # memory comes from the pod's limit there; here every node shares one machine's
        node_type["resources"].pop("memory", None)
        node_type["labels"] = {**(node_type.get("labels") or {}),
                               GROUP_LABEL: "head" if name == HEAD_NODE_TYPE else name}
    config["provider"] = {"type": "external", "module": FAKE_PROVIDER,
                          "use_node_id_as_ip": True, "disable_node_updaters": True,
                          "disable_launch_config_check": True}
    return config


# What KubeRay gives the worker pods of a cluster with GCS fault tolerance: a raylet waits this
# long for a restarted GCS (Ray's default, 60 s, would end every worker of a head restarting
# more slowly than that)
FT_WORKER_RECONNECT_S = "600"


def gcs_fault_tolerance_env(rayservice: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The environment KubeRay sets from ``gcsFaultToleranceOptions``: the head's GCS keeps
    its tables in Redis under a namespace (the RayCluster's UID unless the chart names one),
    the workers wait for a restarted GCS. Empty for a cluster without it."""
    options = rayservice["spec"]["rayClusterConfig"].get("gcsFaultToleranceOptions")
    if not options:
        return {}, {}
    namespace = options.get("externalStorageNamespace") or secrets.token_hex(8)
    return ({"RAY_REDIS_ADDRESS": options["redisAddress"],
             "RAY_external_storage_namespace": namespace},
            {"RAY_gcs_rpc_server_reconnect_timeout_s": FT_WORKER_RECONNECT_S})


def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def local_serve_config(rayservice: dict[str, Any], *, model_dir: str, storage: dict[str, Any],
                       data_dir: str, port: int,
                       api_keys_env: str = "QVQ_API_KEYS") -> dict[str, Any]:
    """The chart's ``serveConfigV2`` with what points into a Kubernetes cluster pointed here:
    the model directory, the object store, where API keys come from, the data dir; and Serve's
    proxy on 127.0.0.1, on the head only. Everything else is the chart's."""
    config = serve_config(rayservice)
    for app in config["applications"]:
        args = app["args"]
        args["model"]["path"] = model_dir
        args["storage"] = storage
        args["auth"] = {"api_keys_env": api_keys_env}
        args["data_dir"] = data_dir
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1",
                              "port": port}
    config["proxy_location"] = "HeadOnly"
    return config


# Fixed ports of the nodes are drawn from here: below Linux's ephemeral range (where Ray's own
# port-0 listeners and every client socket land, so a port free now could be taken by the
# time its node binds it) and above Ray's worker ports (10002-19999).
NODE_PORTS = range(20000, 32000)


def free_port() -> int:
    """A port nothing listens on now, outside the ranges others pick from at random."""
    for _ in range(200):
        port = secrets.choice(NODE_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LocalClusterError("no free port in 20000-32000")


@dataclass
class _Node:
    shape: NodeShape
    proc: subprocess.Popen
    log: pathlib.Path
    metrics_port: int


class LocalRayCluster:
    """The nodes of :func:`node_shapes` as raylets on 127.0.0.1. ``start`` returns when every
    node is alive; ``kill`` takes one node down as a lost pod would go (every process, no
    goodbye); ``stop`` ends all of them, and nothing of the cluster outlives it."""

    def __init__(self, shapes: list[NodeShape], *, env: Mapping[str, str] | None = None,
                 log_dir: pathlib.Path | None = None,
                 autoscaling: dict[str, Any] | None = None,
                 head_env: Mapping[str, str] | None = None,
                 worker_env: Mapping[str, str] | None = None):
        if not shapes or shapes[0].group != "head":
            raise LocalClusterError("the first node must be the head")
        if autoscaling is not None and len(shapes) > 1:
            raise LocalClusterError("with the autoscaler, the head is the only node to start: "
                                    "the autoscaler starts each group's minimum")
        self.autoscaling = autoscaling
        self.shapes = shapes
        self.temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="qvqc-", dir="/tmp"))
        self.log_dir = log_dir or self.temp_dir / "nodes"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        # Ray's token authentication, with a token of this cluster's own: the dashboard
        # (Serve's REST API) refuses requests without it
        token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": token, **(env or {})}
        if autoscaling is not None:
            # the fake provider refuses to load without the first; the second is the period
            # of the autoscaler's loop (KubeRay's runs every 5 s; 1 s keeps the measured
            # stages about Serve and the nodes rather than this loop)
            self.env |= {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self.headers = {"Authorization": f"Bearer {token}"}
        # the processes of the head that have no node of their own, the autoscaler's monitor
        # and the nodes its fake provider starts, take loopback as this host's address (Ray's
        # switch for single-host Ray on macOS and Windows; a worker's ``ray start`` refuses
        # to join with it, so only the head gets it)
        self.head_env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(head_env or {})}
        self.worker_env = dict(worker_env or {})
        self.nodes: dict[str, _Node] = {}
        self.killed: set[str] = set()

    def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.dashboard}{path}", headers=self.headers,
                         timeout=kwargs.pop("timeout", 30), **kwargs)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _argv(self, shape: NodeShape, metrics_port: int) -> list[str]:
        labels = f"{NODE_LABEL}={shape.name},{GROUP_LABEL}={shape.group}"
        argv = [sys.executable, "-m", "serving.kube.raystart", "start", "--block",
                "--node-ip-address", LOOPBACK,
                "--num-cpus", f"{shape.num_cpus:g}", "--num-gpus", f"{shape.num_gpus:g}",
                "--labels", labels, "--disable-usage-stats",
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(metrics_port),
                "--runtime-env-agent-port", str(free_port())]
        if shape.resources:
            argv += ["--resources", json.dumps(dict(shape.resources))]
        if shape.group == "head":
            argv += ["--head", "--port", str(self.gcs_port), "--temp-dir", str(self.temp_dir),
                     "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port)]
            if self.autoscaling is not None:
                config = self.temp_dir / "autoscaling.yaml"
                self.autoscaling["provider"]["gcs_address"] = self.address
                config.write_text(yaml.safe_dump(self.autoscaling))
                argv += ["--autoscaling-config", str(config)]
        else:
            argv += ["--address", self.address]
        return argv

    def _launch(self, shape: NodeShape) -> None:
        log = self.log_dir / f"{shape.name}.log"
        metrics_port = free_port()
        env = self.env | (self.head_env if shape.group == "head" else self.worker_env)
        with log.open("a") as out:
            proc = subprocess.Popen(self._argv(shape, metrics_port), env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.killed.discard(shape.name)
        self.nodes[shape.name] = _Node(shape, proc, log, metrics_port)

    def metrics(self, name: str) -> str:
        """The Prometheus text of one node's metrics agent (Ray's and ours)."""
        port = self.nodes[name].metrics_port
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    def start(self, timeout_s: float = 180) -> LocalRayCluster:
        head, *workers = self.shapes
        self._launch(head)
        self._wait(lambda nodes: head.name in nodes, timeout_s, "the head")
        self._wait_for_dashboard(timeout_s)
        for shape in workers:  # one at a time: nodes of one host name their sockets in turn
            self._launch(shape)
            self.wait_for_nodes([shape.name], timeout_s)
        if self.autoscaling is not None:
            minimum = {name: t.get("min_workers", 0)
                       for name, t in self.autoscaling["available_node_types"].items()
                       if name != HEAD_NODE_TYPE}
            self._wait(lambda nodes: all(len(group_nodes(nodes, g)) >= n
                                         for g, n in minimum.items()),
                       timeout_s, "the autoscaler's minimum workers")
        return self

    def restart_head(self, timeout_s: float = 180) -> None:
        """The head pod's container starts again (KubeRay's restartPolicy), on the same
        address: a new GCS, which reloads the cluster's tables from Redis if it has GCS fault
        tolerance and starts empty if not."""
        # a restarted container has a fresh file system: without this, ``ray start`` reads
        # the last cluster's address there and, finding this host's worker raylets pointed
        # at it, refuses to start a GCS "already running" (one pod's view of one host)
        (self.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        self._launch(self.nodes["head"].shape)
        self._wait_for_dashboard(timeout_s)

    def exited(self) -> list[str]:
        """Nodes whose processes ended without :meth:`kill` (a worker whose raylet the new
        head refused, for one)."""
        return [name for name, node in self.nodes.items()
                if name not in self.killed and node.proc.poll() is not None]

    def relaunch_exited(self, timeout_s: float = 120) -> list[str]:
        """Every worker pod whose container ended starts again (same pod, same group) and
        joins, as Kubernetes restarts a pod's container."""
        names = self.exited()
        self.killed.update(names)  # until each is up again, its end is expected
        for name in names:
            self.add(self.nodes[name].shape, timeout_s)
        return names

    def add(self, shape: NodeShape, timeout_s: float = 120) -> None:
        """One more pod of a group (what the autoscaler would add)."""
        self._launch(shape)
        self.wait_for_nodes([shape.name], timeout_s)

    def alive_nodes(self) -> dict[str, dict[str, Any]]:
        """Alive Ray nodes by our node name, from the dashboard's state API."""
        resp = self._get("/api/v0/nodes", params={"detail": "1", "limit": 100}, timeout=10)
        resp.raise_for_status()
        out = {}
        for node in resp.json()["data"]["result"]["result"]:
            if node.get("state") == "ALIVE" and (name := node_name(node)):
                if node.get("node_ip") != LOOPBACK:
                    raise LocalClusterError(
                        f"node {name} registered at {node.get('node_ip')}, not {LOOPBACK}: "
                        "the nodes of one host must talk over loopback only")
                out[name] = node
        return out

    def wait_for_nodes(self, names: list[str], timeout_s: float) -> None:
        self._wait(lambda nodes: set(names) <= set(nodes), timeout_s, ", ".join(names))

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for name, node in self.nodes.items():
                if name not in self.killed and node.proc.poll() is not None:
                    raise LocalClusterError(f"node {name} exited: "
                                            + node.log.read_text(errors="replace")[-3000:])
            try:
                if ready(self.alive_nodes()):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise LocalClusterError(f"{what} did not come up in {timeout_s:.0f} s")
            time.sleep(1)

    def _wait_for_dashboard(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self._get("/api/version", timeout=5).status_code == 200:
                    return
            time.sleep(1)
        raise LocalClusterError("the head's dashboard did not answer")

    def processes(self, name: str) -> list[psutil.Process]:
        """Every process of one node: its ``ray start`` and what that started (raylet, GCS,
        agents, workers and their children)."""
        node = self.nodes[name]
        try:
            root = psutil.Process(node.proc.pid)
        except psutil.NoSuchProcess:
            return []
        return [root, *root.children(recursive=True)]

    def kill(self, name: str) -> None:
        """The node is gone at once, as when its pod's machine dies."""
        self.killed.add(name)
        for proc in self.processes(name):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.nodes[name].proc.wait(timeout=30)

    def kill_autoscaled(self, name: str) -> None:
        """A node the autoscaler started, gone at once: its raylet, the agents and workers the
        raylet started (every one names the node's id on its command line). The autoscaler
        is told nothing: it sees the node's heartbeats stop, as it would for a lost pod."""
        node_id = self.alive_nodes()[name]["node_id"]
        roots = [proc for proc in psutil.process_iter(["cmdline"])
                 if any(node_id in arg for arg in proc.info["cmdline"] or ())]
        if not roots:
            raise LocalClusterError(f"no process of node {name} ({node_id})")
        procs = {proc.pid: proc for root in roots for proc in self._tree(root)}
        for proc in procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if not _gone(list(procs.values()), timeout_s=30):
            raise LocalClusterError(f"node {name} still runs 30 s after SIGKILL")

    @staticmethod
    def _tree(root: psutil.Process) -> list[psutil.Process]:
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            node = self.nodes[name]
            if node.proc.poll() is None:
                procs = self.processes(name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
                _, alive = psutil.wait_procs(procs, timeout=20)
                for proc in alive:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
        # a few rounds: a SIGKILLed process takes a moment to end, and one that was starting
        # (a worker a raylet spawned as the node went down) may show up only after a sweep
        for _ in range(3):
            if not (leftovers := leftover_processes(self.temp_dir)):
                break
            for proc in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            _gone(leftovers, timeout_s=30)

    # ------------------------------------------------------------------ Serve's REST API

    def deploy(self, config: dict[str, Any]) -> None:
        """``PUT /api/serve/applications/``: what KubeRay does with ``serveConfigV2``."""
        resp = httpx.put(f"{self.dashboard}/api/serve/applications/", json=config,
                         headers=self.headers, timeout=60)
        if resp.status_code != 200:
            raise LocalClusterError(f"serve deploy: {resp.status_code} {resp.text[:2000]}")

    def serve_details(self) -> dict[str, Any]:
        resp = self._get("/api/serve/applications/")
        resp.raise_for_status()
        return resp.json()

    def wait_until_running(self, names: list[str], timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        details: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                details = self.serve_details()
                apps = details.get("applications") or {}
                if all(apps.get(n, {}).get("status") == "RUNNING" for n in names):
                    return details
                failed = {n: a.get("message") for n, a in apps.items()
                          if a.get("status") == "DEPLOY_FAILED"}
                if failed:
                    raise LocalClusterError(f"serve apps failed: {failed}")
            time.sleep(2)
        raise LocalClusterError("serve apps not RUNNING in time: " + json.dumps(
            {n: a.get("status") for n, a in (details.get("applications") or {}).items()}))

    def replica_nodes(self) -> dict[str, list[str]]:
        """Deployment name -> our node name of each running replica."""
        by_id = {node["node_id"]: name for name, node in self.alive_nodes().items()}
        out: dict[str, list[str]] = {}
        for app in (self.serve_details().get("applications") or {}).values():
            for dep_name, dep in (app.get("deployments") or {}).items():
                for replica in dep.get("replicas") or []:
                    if replica.get("state") == "RUNNING":
                        out.setdefault(dep_name, []).append(
                            by_id.get(replica.get("node_id"), "?"))
        return out


def node_name(node: Mapping[str, Any]) -> str | None:
    """Our name of a Ray node (the state API's record): the one we gave a node we started;
    the group and the end of the node id for one the autoscaler started (the fake provider
    numbers them: ``gpu-workers-00001``)."""
    labels = node.get("labels") or {}
    if NODE_LABEL in labels:
        return labels[NODE_LABEL]
    if GROUP_LABEL in labels:
        return f"{labels[GROUP_LABEL]}-{node['node_id'][-5:]}"
    return None


def group_nodes(nodes: Mapping[str, Any], group: str) -> list[str]:
    return [name for name, node in nodes.items()
            if (node.get("labels") or {}).get(GROUP_LABEL) == group]


def kube_status(cluster: LocalRayCluster, rayservice: dict[str, Any]) -> dict[str, Any]:
    """What ``kubectl qvq status`` would report for this cluster: the plugin's own summary
    (:func:`serving.kube.rayservice.summarize`) fed as KubeRay feeds it, with the RayService's
    status copied from Serve's REST API and one Running, Ready pod per alive node."""
    from serving.kube.rayservice import GPU_RESOURCE, summarize

    apps = {}
    for name, app in (cluster.serve_details().get("applications") or {}).items():
        apps[name] = {"status": app.get("status"), "message": app.get("message") or "",
                      "serveDeploymentStatuses": {
                          dep: {"status": d.get("status"), "message": d.get("message") or ""}
                          for dep, d in (app.get("deployments") or {}).items()}}
    rs = {**rayservice, "status": {"serviceStatus": "Running", "activeServiceStatus": {
        "rayClusterName": "local", "applicationStatuses": apps}}}
    pods = []
    for node in cluster.alive_nodes().values():
        group = node["labels"][GROUP_LABEL]
        pods.append({
            "metadata": {"labels": {"ray.io/node-type": "head" if group == "head" else "worker",
                                    "ray.io/group": group}},
            "spec": {"containers": [{"resources": {"limits": {
                GPU_RESOURCE: int(node["resources_total"].get("GPU", 0))}}}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}})
    return summarize(rs, {"local": (None, pods)})


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(procs: list[psutil.Process], timeout_s: float) -> bool:
    """Whether every one of ``procs`` ended (or is a zombie: its parent, maybe not us, has yet
    to reap it) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(_running(proc) for proc in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def leftover_processes(temp_dir: pathlib.Path) -> list[psutil.Process]:
    """Processes of a cluster (their command line names its temp dir or session)."""
    mark = str(temp_dir)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if mark in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
    return found


@contextlib.contextmanager
def running(shapes: list[NodeShape], **kwargs: Any) -> Iterator[LocalRayCluster]:
    cluster = LocalRayCluster(shapes, **kwargs)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
