"""kubectl-qvq against kmock's Kubernetes API emulator on 127.0.0.1.

The emulator runs in its own event-loop thread; each test writes a kubeconfig pointing at it
and calls the plugin's ``main`` in-process, then checks what it printed and what the emulator
holds or received. The emulator runs no controllers: the RayService, its RayCluster and pods
are objects built here as KubeRay would leave them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import socket
import threading

import jsonpatch
import kmock
import pytest
import yaml
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from serving.config import AutoscalingConfig, ServingConfig
from serving.kube.plugin import main

pytestmark = pytest.mark.k8s

NS = "serving"
NAME = "qvq-qvq-serving"
ACTIVE = f"{NAME}-x7k2p"
API_SERVICE = "qvq-qvq-serving-api"
KUBE_TOKEN = "kube-token-123"
RAYSERVICES = "ray.io/v1/rayservices"
RAYCLUSTERS = "ray.io/v1/rayclusters"
PODS = "v1/pods"
PROXY = f"/api/v1/namespaces/{NS}/services/{API_SERVICE}:8000/proxy/v1"


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus two API-server behaviours the plugin relies on: equality label
    selectors on lists, and 422 when a JSON patch's ``test`` op fails."""

    async def _serve_list(self, request):
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            wanted = dict(term.split("=", 1) for term in selector.split(","))
            result["items"] = [item for item in result["items"]
                               if all((item.get("metadata", {}).get("labels") or {}).get(k) == v
                                      for k, v in wanted.items())]
        return result

    async def _render_error(self, exc):
        if isinstance(exc, jsonpatch.JsonPatchException | jsonpatch.JsonPointerException):
            exc = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)


class Loop:
    """An asyncio loop in a thread, for the servers; the plugin under test is synchronous."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def serve(self, handler_cls):
        async def start():
            handler = await self.stack.enter_async_context(handler_cls())
            server = await self.stack.enter_async_context(kmock.Server(handler))
            return handler, str(server.url).rstrip("/")
        return self.run(start())

    def close(self):
        self.run(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def loop():
    running = Loop()
    yield running
    running.close()


@pytest.fixture
def kube(loop, tmp_path):
    """(emulator, kubeconfig path) with the qvq RayService, its RayCluster and pods."""
    emulator, url = loop.serve(Emulator)
    for resource, kind in ((RAYSERVICES, "RayService"), (RAYCLUSTERS, "RayCluster")):
        emulator.resources[resource] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
    emulator.objects[RAYSERVICES, NS, NAME] = rayservice()
    emulator.objects[RAYCLUSTERS, NS, ACTIVE] = raycluster()
    for pod_obj in pods():
        emulator.objects[PODS, NS, pod_obj["metadata"]["name"]] = pod_obj
    return emulator, write_kubeconfig(tmp_path, url)


def write_kubeconfig(tmp_path, server: str, namespace: str = NS) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": KUBE_TOKEN}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester",
                                                   "namespace": namespace}}],
    }))
    return str(path)


# --- objects as KubeRay leaves them ----------------------------------------------------------

def serve_args() -> dict:
    return {
        "model": {"path": "/models/tiny", "served_name": "qvq-72b-preview",
                  "tensor_parallel_size": 4},
        "deployments": {
            "router": {"num_cpus": 0.5, "autoscaling": {"min_replicas": 1, "max_replicas": 4}},
            "preprocessor": {"num_cpus": 2, "autoscaling": {"min_replicas": 1,
                                                            "max_replicas": 8}},
            "generator": {"num_gpus_per_worker": 1,
                          "autoscaling": {"min_replicas": 1, "max_replicas": 2,
                                          "target_ongoing_requests": 4,
                                          "downscale_delay_s": 900}},
        },
        "storage": {"backend": "local", "local": {"root": "/data/store"}},
    }


def serve_config_v2(args: dict | None = None, deployments: list | None = None) -> str:
    app = {"name": "qvq", "import_path": "serving.app:app_builder", "route_prefix": "/",
           "args": serve_args() if args is None else args}
    if deployments is not None:
        app["deployments"] = deployments
    return yaml.safe_dump({"applications": [app]}, sort_keys=False)


def pod_template(gpus: int) -> dict:
    resources = {"limits": {"cpu": "8", "memory": "64Gi"},
                 "requests": {"cpu": "8", "memory": "64Gi"}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
    return {"spec": {"containers": [{"name": "ray-worker", "image": "qvq-serving:test",
                                     "resources": resources}]}}


def worker_groups(gpu_replicas: int = 1) -> list[dict]:
    return [
        {"groupName": "cpu-workers", "replicas": 2, "minReplicas": 1, "maxReplicas": 4,
         "rayStartParams": {}, "template": pod_template(0)},
        {"groupName": "gpu-workers", "replicas": gpu_replicas, "minReplicas": 1,
         "maxReplicas": 2, "rayStartParams": {}, "template": pod_template(4)},
    ]


def cluster_spec(gpu_replicas: int = 1) -> dict:
    return {"enableInTreeAutoscaling": True,
            "headGroupSpec": {"rayStartParams": {"num-gpus": "0"}, "template": pod_template(0)},
            "workerGroupSpecs": worker_groups(gpu_replicas)}


def rayservice(name: str = NAME, labelled: bool = True) -> dict:
    labels = {"app.kubernetes.io/name": "qvq-serving", "app.kubernetes.io/instance": "qvq"}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": name, "namespace": NS, "labels": labels if labelled else {}},
        "spec": {
            "serveService": {"metadata": {"name": API_SERVICE}},
            "serveConfigV2": serve_config_v2(),
            "rayClusterConfig": cluster_spec(),
        },
        "status": {
            "serviceStatus": "Running", "numServeEndpoints": 2,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints",
                 "message": "Number of serve endpoints is greater than 0",
                 "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster",
                 "message": "Active Ray cluster exists and no pending Ray cluster",
                 "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
            "activeServiceStatus": {
                "rayClusterName": ACTIVE,
                "applicationStatuses": {"qvq": {"status": "RUNNING", "serveDeploymentStatuses": {
                    "Router": {"status": "HEALTHY"},
                    "ImagePreprocessor": {"status": "HEALTHY"},
                    "QVQGenerator": {"status": "UPSCALING",
                                     "message": "Upscaling from 1 to 2 replicas."},
                    "BatchRunner": {"status": "HEALTHY"}}}},
            },
        },
    }


def raycluster() -> dict:
    # The autoscaler has raised gpu-workers to 2 on the live cluster.
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": ACTIVE, "namespace": NS,
                         "labels": {"ray.io/originated-from-crd": "RayService"}},
            "spec": cluster_spec(gpu_replicas=2),
            "status": {"state": "ready", "readyWorkerReplicas": 3}}


def pod(name: str, cluster: str, group: str, *, gpus: int = 0, phase: str = "Running",
        ready: bool = True) -> dict:
    node_type = "head" if group == "headgroup" else "worker"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"ray.io/cluster": cluster, "ray.io/group": group,
                                    "ray.io/node-type": node_type}},
            "spec": pod_template(gpus)["spec"],
            "status": {"phase": phase,
                       "conditions": [{"type": "Ready", "status": str(ready)}]}}


def pods() -> list[dict]:
    return [
        pod(f"{ACTIVE}-head", ACTIVE, "headgroup"),
        pod(f"{ACTIVE}-cpu-workers-a", ACTIVE, "cpu-workers"),
        pod(f"{ACTIVE}-cpu-workers-b", ACTIVE, "cpu-workers"),
        pod(f"{ACTIVE}-gpu-workers-a", ACTIVE, "gpu-workers", gpus=4),
        # Scheduled but waiting for GPUs: counted as desired, not as running or in use.
        pod(f"{ACTIVE}-gpu-workers-b", ACTIVE, "gpu-workers", gpus=4, phase="Pending",
            ready=False),
        # Another Ray cluster in the namespace: none of ours.
        pod("other-gpu-workers-a", "other", "gpu-workers", gpus=8),
    ]


def patches(emulator) -> list:
    return [r for r in emulator if r.method == "PATCH"]


def stored(emulator, resource: str, name: str) -> dict:
    return copy.deepcopy(emulator.objects[resource, NS, name].raw)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- status ----------------------------------------------------------------------------------

def test_status_json_reports_groups_and_gpus_in_use(kube, capsys):
    emulator, kubeconfig = kube
    code, out, err = run(capsys, "status", "-o", "json", "--kubeconfig", kubeconfig)
    assert code == 0, err
    report = json.loads(out)
    assert report["name"] == NAME and report["namespace"] == NS
    assert report["serviceStatus"] == "Running"
    assert report["apiService"] == API_SERVICE
    assert [(c["type"], c["status"]) for c in report["conditions"]] == [
        ("Ready", "True"), ("UpgradeInProgress", "False")]
    active = report["clusters"]["active"]
    assert active["rayClusterName"] == ACTIVE and active["state"] == "ready"
    app = active["applications"]["qvq"]
    assert app["status"] == "RUNNING"
    assert app["deployments"]["QVQGenerator"] == {"status": "UPSCALING",
                                                  "message": "Upscaling from 1 to 2 replicas."}
    assert active["groups"] == {
        "head": {"minReplicas": None, "maxReplicas": None, "desired": 1,
                 "running": 1, "ready": 1, "gpus": 0},
        "cpu-workers": {"minReplicas": 1, "maxReplicas": 4, "desired": 2,
                        "running": 2, "ready": 2, "gpus": 0},
        # desired from the live RayCluster (autoscaler: 2), one pod still Pending
        "gpu-workers": {"minReplicas": 1, "maxReplicas": 2, "desired": 2,
                        "running": 1, "ready": 1, "gpus": 4},
    }
    assert report["gpusInUse"] == 4
    assert "pending" not in report["clusters"]
    assert not patches(emulator)


def test_status_table_shows_pending_cluster_during_upgrade(kube, capsys):
    emulator, kubeconfig = kube
    pending = f"{NAME}-p9q8r"
    rs = rayservice()
    rs["status"]["pendingServiceStatus"] = {
        "rayClusterName": pending,
        "applicationStatuses": {"qvq": {"status": "DEPLOYING", "serveDeploymentStatuses": {
            "QVQGenerator": {"status": "UPDATING", "message": "Loading weights"}}}}}
    emulator.objects[RAYSERVICES, NS, NAME] = rs
    emulator.objects[PODS, NS, f"{pending}-gpu-workers-a"] = pod(
        f"{pending}-gpu-workers-a", pending, "gpu-workers", gpus=4, ready=False)
    code, out, err = run(capsys, "status", "--kubeconfig", kubeconfig)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"RayService {NS}/{NAME}: Running"
    assert f"Active cluster {ACTIVE} (ready):" in lines
    assert f"Pending cluster {pending}:" in lines
    assert re.search(r"^\s+gpu-workers\s+1\s+2\s+2\s+1\s+1\s+4$", out, re.M)
    assert re.search(r"^\s+cpu-workers\s+1\s+4\s+2\s+2\s+2\s+0$", out, re.M)
    assert re.search(r"^\s+QVQGenerator\s+UPDATING\s+Loading weights$", out, re.M)
    assert re.search(r"^\s+Ready\s+True\s+NonZeroServeEndpoints\s", out, re.M)
    assert lines[-1] == "GPUs in use: 8"  # both clusters hold GPUs while upgrading


# --- scale -----------------------------------------------------------------------------------

def test_scale_group_patches_rayservice_and_live_raycluster(kube, capsys):
    emulator, kubeconfig = kube
    before_rs = stored(emulator, RAYSERVICES, NAME)
    code, out, err = run(capsys, "scale", "gpu-workers", "--min", "2", "--max", "3",
                         "--kubeconfig", kubeconfig)
    assert code == 0, err
    rs = stored(emulator, RAYSERVICES, NAME)
    gpu = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
    assert (gpu["minReplicas"], gpu["maxReplicas"], gpu["replicas"]) == (2, 3, 2)  # 1 clamped
    rc = stored(emulator, RAYCLUSTERS, ACTIVE)
    rc_gpu = rc["spec"]["workerGroupSpecs"][1]
    assert (rc_gpu["minReplicas"], rc_gpu["maxReplicas"], rc_gpu["replicas"]) == (2, 3, 2)
    # everything else as it was
    for obj in (rs, before_rs):
        obj["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].update(
            minReplicas=0, maxReplicas=0, replicas=0)
    assert rs == before_rs
    sent = patches(emulator)
    assert [r.headers["Content-Type"] for r in sent] == ["application/json-patch+json"] * 2
    assert {"op": "test", "path": "/spec/rayClusterConfig/workerGroupSpecs/1/minReplicas",
            "value": 1} in sent[0].data
    assert f"rayservices/{NAME} patched" in out and f"rayclusters/{ACTIVE} patched" in out


def test_scale_group_max_below_replicas_clamps_them(kube, capsys):
    emulator, kubeconfig = kube
    code, _, err = run(capsys, "scale", "cpu-workers", "--max", "1", "--kubeconfig", kubeconfig)
    assert code == 0, err
    cpu = stored(emulator, RAYSERVICES, NAME)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (cpu["minReplicas"], cpu["maxReplicas"], cpu["replicas"]) == (1, 1, 1)


def serve_app_of(emulator) -> dict:
    return yaml.safe_load(stored(emulator, RAYSERVICES, NAME)["spec"]["serveConfigV2"])[
        "applications"][0]


def with_deployments(emulator, deployments: list) -> None:
    rs = rayservice()
    rs["spec"]["serveConfigV2"] = serve_config_v2(deployments=deployments)
    emulator.objects[RAYSERVICES, NS, NAME] = rs


def code_version(app: dict) -> str:
    return get_app_code_version(ServeApplicationSchema.model_validate(app))


GENERATOR_2_5 = {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 5,
                 "target_ongoing_requests": 4.0, "upscale_delay_s": 30.0,
                 "downscale_delay_s": 900.0, "look_back_period_s": 30.0}


def test_scale_deployment_writes_an_override_and_leaves_args_alone(kube, capsys):
    emulator, kubeconfig = kube
    before = stored(emulator, RAYSERVICES, NAME)
    code, out, err = run(capsys, "scale", "generator", "--min", "2", "--max", "5",
                         "--kubeconfig", kubeconfig)
    assert code == 0, err
    after = stored(emulator, RAYSERVICES, NAME)
    doc = yaml.safe_load(after["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(doc)
    app = doc["applications"][0]
    assert app["args"] == serve_args()  # the args, and so their code-version hash, unchanged
    # complete: the args' target and delays kept, since Serve replaces the whole config
    assert app["deployments"] == [{"name": "QVQGenerator", "autoscaling_config": GENERATOR_2_5}]
    assert {k: v for k, v in app.items() if k not in ("args", "deployments")} == {
        "name": "qvq", "import_path": "serving.app:app_builder", "route_prefix": "/"}
    del after["spec"]["serveConfigV2"], before["spec"]["serveConfigV2"]
    assert after == before
    [sent] = patches(emulator)  # the RayCluster is not touched
    assert sent.data[0] == {"op": "test", "path": "/spec/serveConfigV2",
                            "value": serve_config_v2()}
    assert "generator min_replicas 1 -> 2; generator max_replicas 2 -> 5" in out
    # Ray 2.60 puts the list of autoscaling overrides into the app's code version: the
    # first override of a deployment restarts every replica once, and the plugin says so.
    assert "first autoscaling_config override of QVQGenerator" in err
    assert "redeploys every deployment of the app (the generator included)" in err
    assert "Helm values still hold the old bounds" in err


def test_scale_generator_writes_into_the_chat_application(kube, capsys):
    """The chart's layout with server.chat_entry generator: the generator's override lives
    in the application that runs it (serving.app:chat_app_builder), the main one is left
    alone, and `config` reads it from there."""
    emulator, kubeconfig = kube
    rs = rayservice()
    main = {"name": "qvq", "import_path": "serving.app:app_builder", "route_prefix": "/",
            "args": serve_args(), "deployments": []}
    chat = {"name": "qvq-chat", "import_path": "serving.app:chat_app_builder",
            "route_prefix": "/v1/chat", "args": serve_args(), "deployments": []}
    rs["spec"]["serveConfigV2"] = yaml.safe_dump({"applications": [main, chat]},
                                                 sort_keys=False)
    emulator.objects[RAYSERVICES, NS, NAME] = rs
    code, out, err = run(capsys, "scale", "generator", "--min", "2", "--max", "5",
                         "--kubeconfig", kubeconfig)
    assert code == 0, err
    doc = yaml.safe_load(stored(emulator, RAYSERVICES, NAME)["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(doc)
    after_main, after_chat = doc["applications"]
    assert after_main == main
    assert after_chat["deployments"] == [{"name": "QVQGenerator",
                                          "autoscaling_config": GENERATOR_2_5}]
    code, out, err = run(capsys, "config", "-o", "json", "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert json.loads(out)["deployments"]["generator"]["autoscaling"]["max_replicas"] == 5


def test_scale_deployment_again_updates_its_entry_in_place(kube, capsys):
    emulator, kubeconfig = kube
    for argv in (["--min", "2", "--max", "5"], ["--max", "3"]):
        code, out, err = run(capsys, "scale", "generator", *argv, "--kubeconfig", kubeconfig)
        assert code == 0, err
    first = yaml.safe_load(patches(emulator)[0].data[1]["value"])["applications"][0]
    app = serve_app_of(emulator)
    assert app["deployments"] == [{"name": "QVQGenerator",
                                   "autoscaling_config": {**GENERATOR_2_5, "max_replicas": 3}}]
    assert app["args"] == serve_args()
    assert "generator max_replicas 5 -> 3" in out
    assert "Serve applies the new autoscaling_config of QVQGenerator in place, without " \
           "restarting replicas" in err
    assert code_version(app) == code_version(first)  # what makes Serve update in place

    code, out, err = run(capsys, "scale", "router", "--max", "6", "--kubeconfig", kubeconfig)
    assert code == 0, err
    app = serve_app_of(emulator)
    assert app["deployments"] == [
        {"name": "QVQGenerator", "autoscaling_config": {**GENERATOR_2_5, "max_replicas": 3}},
        {"name": "Router", "autoscaling_config": {
            "min_replicas": 1, "initial_replicas": 1, "max_replicas": 6,
            "target_ongoing_requests": 2.0, "upscale_delay_s": 30.0,
            "downscale_delay_s": 600.0, "look_back_period_s": 30.0}}]
    assert app["args"] == serve_args()
    assert "first autoscaling_config override of Router" in err


def test_scale_deployment_keeps_other_override_keys_and_entries(kube, capsys):
    emulator, kubeconfig = kube
    with_deployments(emulator, [{"name": "BatchRunner", "num_replicas": 1},
                                {"name": "QVQGenerator", "max_ongoing_requests": 7}])
    code, _, err = run(capsys, "scale", "generator", "--min", "2", "--max", "5",
                       "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert serve_app_of(emulator)["deployments"] == [
        {"name": "BatchRunner", "num_replicas": 1},
        {"name": "QVQGenerator", "max_ongoing_requests": 7, "autoscaling_config": GENERATOR_2_5}]


def test_scale_deployment_starts_from_an_existing_override(kube, capsys):
    emulator, kubeconfig = kube
    # Serve replaces the whole autoscaling_config with an override: the keys it lacks take
    # Serve's defaults, not the args' (target 4, downscale 900).
    with_deployments(emulator, [{"name": "QVQGenerator",
                                 "autoscaling_config": {"max_replicas": 5}}])
    code, out, err = run(capsys, "scale", "generator", "--min", "6", "--kubeconfig", kubeconfig)
    assert code == 1
    assert "generator: min 6 is greater than max 5 (pass both --min and --max)" in err
    assert not patches(emulator)
    code, out, err = run(capsys, "scale", "generator", "--min", "2", "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert "generator min_replicas 1 -> 2" in out and "max_replicas" not in out
    assert serve_app_of(emulator)["deployments"] == [{
        "name": "QVQGenerator", "autoscaling_config": {
            "min_replicas": 2, "initial_replicas": 2, "max_replicas": 5,
            "target_ongoing_requests": 2.0, "upscale_delay_s": 30.0, "downscale_delay_s": 600.0,
            "look_back_period_s": 30.0}}]


def test_scale_deployment_checks_the_whole_serve_config(kube, capsys):
    emulator, kubeconfig = kube
    with_deployments(emulator, [{"name": "Router", "num_replicas": 2}])
    code, out, err = run(capsys, "scale", "router", "--max", "6", "--kubeconfig", kubeconfig)
    assert code == 1 and out == ""
    assert "the new serveConfigV2 would not be valid for Ray Serve" in err
    assert "num_replicas is not allowed when autoscaling_config is provided" in err
    assert not patches(emulator)


def test_scale_deployment_to_its_current_bounds_changes_nothing(kube, capsys):
    emulator, kubeconfig = kube
    code, out, err = run(capsys, "scale", "generator", "--min", "1", "--max", "2",
                         "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert out == "generator: nothing to change\n"
    assert not patches(emulator)


def test_our_autoscaling_defaults_are_serves():
    # A partial override is completed with Serve's defaults; `config` fills it with ours.
    for name, field in AutoscalingConfig.model_fields.items():
        assert field.default == ServeAutoscalingConfig.model_fields[name].default, name


def test_scale_dry_run_prints_patch_and_sends_nothing(kube, capsys):
    emulator, kubeconfig = kube
    code, out, err = run(capsys, "scale", "router", "--max", "6", "--dry-run",
                         "--kubeconfig", kubeconfig)
    assert code == 0, err
    [planned] = json.loads(out)
    assert planned["resource"] == f"rayservices/{NAME}"
    assert [op["op"] for op in planned["patch"]] == ["test", "replace"]
    new = yaml.safe_load(planned["patch"][1]["value"])["applications"][0]
    assert new["args"] == serve_args()
    [entry] = new["deployments"]
    assert entry["name"] == "Router" and entry["autoscaling_config"]["max_replicas"] == 6
    assert "first autoscaling_config override of Router" in err
    assert not patches(emulator)


@pytest.mark.parametrize(("argv", "message"), [
    (["gpu-workers", "--min", "3", "--max", "2"], "gpu-workers: min 3 is greater than max 2"),
    (["gpu-workers", "--min", "5"],
     "gpu-workers: min 5 is greater than max 2 (pass both --min and --max)"),
    (["preprocessor", "--min", "-1"], "--min must be a non-negative integer, got -1"),
    (["router", "--max", "0"], "router: max_replicas must be at least 1"),
    (["generator", "--min", "4"], "generator: min 4 is greater than max 2"),
    (["frontend", "--max", "2"], "unknown scale target 'frontend'; valid targets: "
                                 "cpu-workers, gpu-workers, router, preprocessor, generator"),
    (["router"], "give --min, --max or both"),
    (["router", "--max", "two"], "not an integer: 'two'"),
])
def test_scale_refuses_bad_requests_without_patching(kube, capsys, argv, message):
    emulator, kubeconfig = kube
    code, out, err = run(capsys, "scale", *argv, "--kubeconfig", kubeconfig)
    assert code == 1
    assert err.startswith("kubectl qvq: error: ") and message in err
    assert "Traceback" not in err and out == ""
    assert not patches(emulator)


def test_scale_conflict_when_object_changed_since_read(kube, capsys):
    emulator, kubeconfig = kube
    def read_then_change(request):
        seen = stored(emulator, RAYSERVICES, NAME)
        changed = copy.deepcopy(seen)
        changed["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["maxReplicas"] = 5
        emulator.objects[RAYSERVICES, NS, NAME] = changed  # someone else, right after our read
        return seen

    emulator[f"get /apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}"] << read_then_change
    code, _, err = run(capsys, "scale", "gpu-workers", "--max", "3", "--name", NAME,
                       "--kubeconfig", kubeconfig)
    assert code == 1
    assert f"rayservices/{NAME} changed since it was read (422)" in err
    rs = stored(emulator, RAYSERVICES, NAME)
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["maxReplicas"] == 5
    assert stored(emulator, RAYCLUSTERS, ACTIVE)["spec"]["workerGroupSpecs"][1][
        "maxReplicas"] == 2  # not patched after the RayService patch failed


# --- config ----------------------------------------------------------------------------------

def test_config_prints_the_effective_config_as_yaml(kube, capsys, monkeypatch):
    _, kubeconfig = kube
    monkeypatch.setenv("QVQ__MODEL__MAX_MODEL_LEN", "4096")  # local env is not the pods'
    code, out, err = run(capsys, "config", "--kubeconfig", kubeconfig)
    assert code == 0, err
    data = yaml.safe_load(out)
    config = ServingConfig.model_validate(data)
    assert config.model.path == "/models/tiny"
    assert config.model.tensor_parallel_size == 4
    assert config.model.max_model_len == ServingConfig.model_fields["model"].annotation \
        .model_fields["max_model_len"].default
    assert data["deployments"]["preprocessor"]["autoscaling"]["max_replicas"] == 8
    assert "image" in data and "batch" in data  # defaults filled in
    assert list(data)[:2] == ["app_name", "model"]  # model order, not sorted


def test_config_applies_deployment_overrides(kube, capsys):
    emulator, kubeconfig = kube
    code, _, err = run(capsys, "scale", "generator", "--min", "2", "--max", "5",
                       "--kubeconfig", kubeconfig)
    assert code == 0, err
    code, out, err = run(capsys, "config", "-o", "json", "--kubeconfig", kubeconfig)
    assert code == 0, err
    data = json.loads(out)
    assert data["deployments"]["generator"]["autoscaling"] == {
        "min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 4.0,
        "upscale_delay_s": 30.0, "downscale_delay_s": 900.0, "look_back_period_s": 30.0}
    assert data["deployments"]["router"]["autoscaling"]["max_replicas"] == 4  # from args
    assert err == ("kubectl qvq: note: serveConfigV2 overrides deployment QVQGenerator outside "
                   "args: its autoscaling_config is applied to "
                   "deployments.generator.autoscaling\n")


def test_config_names_overrides_it_does_not_show(kube, capsys):
    emulator, kubeconfig = kube
    with_deployments(emulator, [{"name": "BatchRunner", "num_replicas": 1},
                                {"name": "QVQGenerator", "max_ongoing_requests": 7}])
    code, out, err = run(capsys, "config", "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert yaml.safe_load(out)["deployments"]["generator"]["autoscaling"]["max_replicas"] == 2
    assert "overrides deployment BatchRunner outside args: num_replicas not shown" in err
    assert "overrides deployment QVQGenerator outside args: max_ongoing_requests not shown" \
        in err
    with_deployments(emulator, [{"name": "Router"}, {"name": "Router"}])
    code, _, err = run(capsys, "config", "--kubeconfig", kubeconfig)
    assert code == 1 and "deployments lists Router more than once" in err


def test_config_reports_invalid_serve_args(kube, capsys):
    emulator, kubeconfig = kube
    args = serve_args()
    args["deployments"]["router"]["replicas"] = 3
    rs = rayservice()
    rs["spec"]["serveConfigV2"] = serve_config_v2(args)
    emulator.objects[RAYSERVICES, NS, NAME] = rs
    code, _, err = run(capsys, "config", "--kubeconfig", kubeconfig)
    assert code == 1
    assert "deployments.router.replicas: unknown field" in err


# --- batch -----------------------------------------------------------------------------------

def batch_object(status: str) -> dict:
    done = status == "completed"
    return {"id": "batch_1", "object": "batch", "status": status, "input_file_id": "file-1",
            "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "output_file_id": "file-out" if done else None, "error_file_id": None,
            "request_counts": {"total": 2, "completed": 2 if done else 0, "failed": 0}}


def fake_batch_api(handler, prefix: str) -> None:
    handler[f"post {prefix}/files"] << {"id": "file-1", "object": "file", "purpose": "batch"}
    handler[f"post {prefix}/batches"] << batch_object("validating")
    handler[f"get {prefix}/batches/batch_1"] << batch_object("completed")


@pytest.fixture
def batch_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "qvq-72b-preview", "messages": [{"role": "user", "content": "hi"}]},
    }) + "\n" for i in range(2)))
    return path


def test_batch_submit_wait_with_api_url(loop, batch_file, capsys, monkeypatch):
    api, url = loop.serve(kmock.RawHandler)
    fake_batch_api(api, "/v1")
    monkeypatch.setenv("QVQ_API_KEY", "sk-test")
    code, out, err = run(capsys, "batch", "submit", str(batch_file), "--wait", "--api-url", url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "batch_1"
    assert json.loads(lines[1]) == {"id": "batch_1", "status": "completed",
                                    "request_counts": {"total": 2, "completed": 2, "failed": 0},
                                    "output_file_id": "file-out", "error_file_id": None}
    upload, create, poll = list(api)
    assert upload.headers["Authorization"] == "Bearer sk-test"
    assert upload.headers["Content-Type"].startswith("multipart/form-data")
    assert b'name="purpose"\r\n\r\nbatch' in upload.body and batch_file.read_bytes() in upload.body
    assert create.data == {"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                           "completion_window": "24h", "metadata": None}
    assert (poll.method, poll.url.path) == ("GET", "/v1/batches/batch_1")


def test_batch_through_the_service_proxy(kube, batch_file, capsys):
    emulator, kubeconfig = kube
    fake_batch_api(emulator, PROXY)
    code, out, err = run(capsys, "batch", "submit", str(batch_file), "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert out == "batch_1\n"
    code, out, err = run(capsys, "batch", "status", "batch_1", "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert json.loads(out)["status"] == "completed"
    proxied = [r for r in emulator if "/proxy/" in r.url.path]
    assert [(r.method, r.url.path) for r in proxied] == [
        ("POST", f"{PROXY}/files"), ("POST", f"{PROXY}/batches"),
        ("GET", f"{PROXY}/batches/batch_1")]
    assert all(r.headers["Authorization"] == f"Bearer {KUBE_TOKEN}" for r in proxied)
    assert batch_file.read_bytes() in proxied[0].body


def test_batch_api_errors_are_reported(kube, capsys):
    emulator, kubeconfig = kube
    emulator[f"get {PROXY}/batches/batch_9"] << kmock.Response(
        status=401, payload={"error": {"message": "Missing API key", "type": "auth"}})
    code, _, err = run(capsys, "batch", "status", "batch_9", "--kubeconfig", kubeconfig)
    assert code == 1
    assert "HTTP 401: Missing API key" in err and "--api-url" in err
    code, _, err = run(capsys, "batch", "status", "batch_9", "--api-key", "sk",
                       "--kubeconfig", kubeconfig)
    assert code == 1 and "--api-key needs --api-url" in err


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["status"], ["status", "--name", NAME]])
def test_missing_kuberay_crds(loop, tmp_path, capsys, argv):
    emulator, url = loop.serve(Emulator)
    emulator.objects[PODS, NS, "some-pod"] = pod("some-pod", "x", "g")
    code, _, err = run(capsys, *argv, "--kubeconfig", write_kubeconfig(tmp_path, url))
    assert code == 1
    assert "KubeRay is not installed" in err and "ray.io/v1 rayservices" in err


def test_missing_rayservice(kube, capsys):
    emulator, kubeconfig = kube
    code, _, err = run(capsys, "status", "--name", "nope", "--kubeconfig", kubeconfig)
    assert code == 1
    assert "RayService 'nope' not found in namespace 'serving'" in err
    code, _, err = run(capsys, "config", "-n", "elsewhere", "--kubeconfig", kubeconfig)
    assert code == 1
    assert "no RayService labelled app.kubernetes.io/name=qvq-serving in namespace " \
           "'elsewhere'" in err
    emulator.objects[RAYSERVICES, NS, "qvq-b"] = rayservice("qvq-b")
    emulator.objects[RAYSERVICES, NS, "unrelated"] = rayservice("unrelated", labelled=False)
    code, _, err = run(capsys, "status", "--kubeconfig", kubeconfig)
    assert code == 1
    assert f"several RayServices labelled app.kubernetes.io/name=qvq-serving in namespace " \
           f"'serving' (qvq-b, {NAME}); pick one with --name" in err


def test_no_cluster_access(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    code, _, err = run(capsys, "status", "--kubeconfig", kubeconfig)
    assert code == 1
    assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{port} " \
           f"(connection refused)" in err
    code, _, err = run(capsys, "status", "--kubeconfig", str(tmp_path / "missing"))
    assert code == 1 and "kubeconfig" in err and "does not exist" in err


@pytest.mark.parametrize(("status", "message"), [
    (401, "rejected our credentials (401 Unauthorized)"),
    (403, 'forbidden (403) to list rayservices in namespace serving: rayservices.ray.io is '
          'forbidden: User "tester" cannot list'),
])
def test_unauthorized_and_forbidden(kube, capsys, status, message):
    emulator, kubeconfig = kube
    emulator[re.compile(r"/apis/ray\.io/.*")] << kmock.Response(status=status, payload={
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
        "message": 'rayservices.ray.io is forbidden: User "tester" cannot list'})
    code, _, err = run(capsys, "status", "--kubeconfig", kubeconfig)
    assert code == 1
    assert message in err and "Traceback" not in err
