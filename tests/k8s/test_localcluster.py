"""The local cluster's nodes are the chart's pods: shapes read from the rendered RayService."""

import pytest

from serving.kube import chart, localcluster
from tests.conftest import ROOT

VALUES = ROOT / "helm" / "qvq-serving" / "ci"


def rayservice(name: str) -> dict:
    objects = chart.objects(chart.render(chart.load_values(VALUES / name)))
    return next(o for o in objects if o["kind"] == "RayService")


@pytest.mark.parametrize(("quantity", "cores"), [("4", 4.0), ("500m", 0.5), (2, 2.0)])
def test_cpu_quantity(quantity, cores):
    assert localcluster.cpu_quantity(quantity) == cores


def test_shapes_of_the_gpu_group_values():
    shapes = {s.name: s for s in localcluster.node_shapes(rayservice(
        "tiny-gpu-group-values.yaml"))}
    assert list(shapes) == ["head", "cpu-workers-0", "gpu-workers-0"]
    assert (shapes["head"].num_cpus, shapes["head"].num_gpus) == (0, 0)
    cpu = shapes["cpu-workers-0"]
    assert cpu.num_cpus == 4 and cpu.num_gpus == 0 and cpu.resources == {"qvq-cpu-worker": 1000}
    gpu = shapes["gpu-workers-0"]
    assert gpu.num_cpus == 4 and gpu.num_gpus == 1 and gpu.resources == {}
    groups = {g.name: g for g in localcluster.worker_groups(rayservice(
        "tiny-gpu-group-values.yaml"))}
    assert (groups["gpu-workers"].min_replicas, groups["gpu-workers"].max_replicas) == (1, 2)


def test_the_serve_config_keeps_the_charts_deployments():
    rs = rayservice("tiny-gpu-group-values.yaml")
    config = localcluster.local_serve_config(
        rs, model_dir="/m", storage={"backend": "local"}, data_dir="/d", port=8123)
    original = localcluster.serve_config(rs)
    assert [a["name"] for a in config["applications"]] == \
        [a["name"] for a in original["applications"]]
    for ours, theirs in zip(config["applications"], original["applications"], strict=True):
        assert ours["args"]["deployments"] == theirs["args"]["deployments"]
        assert ours["args"]["model"] == {**theirs["args"]["model"], "path": "/m"}
        assert ours["import_path"] == theirs["import_path"]
    assert config["http_options"] == {**original["http_options"], "host": "127.0.0.1",
                                      "port": 8123}
    assert original["http_options"]["request_timeout_s"] == 900


def test_the_autoscaler_config_is_kuberays_translation_of_the_chart():
    """Ray's own KubeRay translation of the rendered RayCluster (node types from the groups,
    min/max from minReplicas/maxReplicas, idle timeout from autoscalerOptions), with the fake
    provider that starts a raylet where KubeRay would create a pod."""
    rs = rayservice("tiny-autoscaling-values.yaml")
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    config = localcluster.autoscaling_config(rs)
    types = config["available_node_types"]
    assert set(types) == {localcluster.HEAD_NODE_TYPE, "cpu-workers", "gpu-workers"}
    assert config["head_node_type"] == localcluster.HEAD_NODE_TYPE
    assert types[localcluster.HEAD_NODE_TYPE]["resources"] == {"CPU": 0, "GPU": 0}
    assert types["cpu-workers"]["resources"] == {"CPU": 1, "GPU": 0, "qvq-cpu-worker": 1000}
    assert types["gpu-workers"]["resources"] == {"CPU": 4, "GPU": 1}
    for name, group in (("cpu-workers", "cpu-workers"), ("gpu-workers", "gpu-workers")):
        assert (types[name]["min_workers"], types[name]["max_workers"]) == (1, 2)
        assert types[name]["labels"] == {localcluster.GROUP_LABEL: group}
    assert config["idle_timeout_minutes"] == 15 / 60
    assert config["upscaling_speed"] == 1000  # upscalingMode Default: no rate limit
    assert config["provider"]["module"] == localcluster.FAKE_PROVIDER
    assert config["max_workers"] == 4


def test_gcs_fault_tolerance_env_follows_the_charts_option():
    values = chart.load_values(VALUES / "tiny-gpu-group-values.yaml")
    objects = chart.objects(chart.render(values))
    assert localcluster.gcs_fault_tolerance_env(
        next(o for o in objects if o["kind"] == "RayService")) == ({}, {})
    values["gcsFaultTolerance"] = {"enabled": True, "redisAddress": "127.0.0.1:6390",
                                   "externalStorageNamespace": "qvq-prod"}
    objects = chart.objects(chart.render(values))
    head, worker = localcluster.gcs_fault_tolerance_env(
        next(o for o in objects if o["kind"] == "RayService"))
    assert head == {"RAY_REDIS_ADDRESS": "127.0.0.1:6390",
                    "RAY_external_storage_namespace": "qvq-prod"}
    assert worker == {"RAY_gcs_rpc_server_reconnect_timeout_s": "600"}


def test_node_names():
    node_id = "f" * 51 + "00003"
    assert localcluster.node_name({"labels": {localcluster.NODE_LABEL: "gpu-workers-0"},
                                   "node_id": node_id}) == "gpu-workers-0"
    assert localcluster.node_name({"labels": {localcluster.GROUP_LABEL: "gpu-workers"},
                                   "node_id": node_id}) == "gpu-workers-00003"
    assert localcluster.node_name({"labels": {}, "node_id": node_id}) is None
    nodes = {"a": {"labels": {localcluster.GROUP_LABEL: "g"}}, "b": {"labels": {}}}
    assert localcluster.group_nodes(nodes, "g") == ["a"]
