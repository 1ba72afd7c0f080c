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
