"""The app is built from config alone: deployments, resources, placement groups, autoscaling."""

import pathlib

import pytest
import yaml
from ray.serve import Application

from serving.api.router import router_deployment
from serving.app import app_builder, build_app
from serving.config import config_from_dict, load_config
from serving.generate.generator import generator_deployment
from serving.preprocess.preprocessor import preprocessor_deployment

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def qvq72b():
    return load_config(ROOT / "configs" / "qvq-72b.yaml", environ={})


def test_tensor_parallel_replica_gets_strict_pack_bundles(qvq72b):
    dep = generator_deployment(qvq72b)
    rc = dep._replica_config
    assert rc.placement_group_strategy == "STRICT_PACK"
    assert rc.placement_group_bundles == [{"CPU": 4.0}] + [{"GPU": 1.0, "CPU": 1}] * 4
    assert rc.ray_actor_options["num_cpus"] == 4.0
    assert "num_gpus" not in rc.ray_actor_options  # GPUs belong to the TP worker bundles
    auto = dep._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 4, 48)


def test_tensor_parallel_bundles_hold_the_configured_worker_resource():
    """The same bundle code with a custom resource where production has GPUs (the CPU
    tensor-parallel tests): vLLM's Ray executor places its workers by that resource."""
    def config(tp):
        raw = yaml.safe_load((ROOT / "configs" / "local-cpu.yaml").read_text())
        raw["model"]["tensor_parallel_size"] = tp
        raw["deployments"]["generator"].update(num_gpus_per_worker=1,
                                               worker_resource="qvq_tp_slot")
        return config_from_dict(raw, environ={})

    rc = generator_deployment(config(2))._replica_config
    assert rc.placement_group_bundles == [{"CPU": 1.0}] + [{"qvq_tp_slot": 1.0, "CPU": 1}] * 2
    assert "num_gpus" not in rc.ray_actor_options
    rc = generator_deployment(config(1))._replica_config
    assert rc.ray_actor_options["resources"] == {"qvq_tp_slot": 1.0}


def test_single_device_replica_has_no_placement_group():
    config = load_config(ROOT / "configs" / "local-cpu.yaml", environ={})
    rc = generator_deployment(config)._replica_config
    assert rc.placement_group_bundles is None
    assert rc.ray_actor_options["num_gpus"] == 0
    assert rc.ray_actor_options["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_cpu_tiers_take_fractional_cpus_and_autoscale(qvq72b):
    pre = preprocessor_deployment(qvq72b)
    assert pre._replica_config.ray_actor_options["num_cpus"] == 2
    assert pre._deployment_config.autoscaling_config.max_replicas == 32
    router = router_deployment(qvq72b)
    assert router._deployment_config.autoscaling_config.min_replicas == 2


def test_build_app_and_serve_builder(tmp_path):
    config = load_config(ROOT / "configs" / "local-cpu.yaml", environ={})
    assert isinstance(build_app(config), Application)
    assert isinstance(app_builder({"config_path": str(ROOT / "configs" / "local-cpu.yaml")}),
                      Application)
    inline = config.model_dump(mode="json")
    assert isinstance(app_builder(inline), Application)
    with pytest.raises(ValueError, match="not both"):
        app_builder({"config_path": "x.yaml", "model": {}})


def test_serve_config_yaml_points_at_the_builders():
    import yaml

    from serving.app import chat_app_builder
    from serving.roles import applications

    serve_config = yaml.safe_load((ROOT / "configs" / "serve-local.yaml").read_text())
    main, chat = serve_config["applications"]
    assert main["import_path"] == "serving.app:app_builder"
    assert chat["import_path"] == "serving.app:chat_app_builder"
    assert isinstance(app_builder(main["args"]), Application)
    assert isinstance(chat_app_builder(chat["args"]), Application)
    config = load_config(ROOT / main["args"]["config_path"], environ={})
    assert [(a["name"], a["route_prefix"]) for a in serve_config["applications"]] \
        == applications(config)


def test_chat_entry_decides_the_applications():
    from serving.app import applications, build_chat_app
    from serving.config import config_from_dict

    config = load_config(ROOT / "configs" / "local-cpu.yaml", environ={})
    assert [(name, prefix) for name, prefix, _ in applications(config)] \
        == [("qvq", "/"), ("qvq-chat", "/v1/chat")]
    data = config.model_dump(mode="json")
    data["server"]["chat_entry"] = "router"
    routed = config_from_dict(data, environ={})
    assert [(name, prefix) for name, prefix, _ in applications(routed)] == [("qvq", "/")]
    with pytest.raises(ValueError, match="chat_entry: generator"):
        build_chat_app(routed)


def test_access_logs_on_the_ingress_deployments_only_by_default():
    config = load_config(ROOT / "configs" / "local-cpu.yaml", environ={})
    assert router_deployment(config).logging_config["enable_access_log"] is True
    # chat_entry generator: the generator is the ingress of /v1/chat/completions
    assert generator_deployment(config).logging_config["enable_access_log"] is True
    assert preprocessor_deployment(config).logging_config["enable_access_log"] is False
    from serving.config import config_from_dict

    data = config.model_dump(mode="json")
    data["server"]["chat_entry"] = "router"
    routed = config_from_dict(data, environ={})
    assert generator_deployment(routed).logging_config["enable_access_log"] is False


def test_custom_resources_pin_replicas_and_fit_the_replica_bundle(qvq72b):
    pinned = {"resources": {"qvq-cpu-worker": 0.01}}
    data = qvq72b.model_dump(mode="json")
    data["deployments"]["preprocessor"].update(pinned)
    data["deployments"]["generator"].update({"resources": {"qvq-gpu-worker": 1},
                                             "memory_gib": 8})
    data["batch"] = {"resources": {"qvq-cpu-worker": 0.01}}
    from serving.batch.runner import runner_deployment
    from serving.config import config_from_dict

    config = config_from_dict(data, environ={})
    pre = preprocessor_deployment(config)._replica_config.ray_actor_options
    assert pre["resources"] == {"qvq-cpu-worker": 0.01}
    gen = generator_deployment(config)._replica_config
    assert gen.ray_actor_options["resources"] == {"qvq-gpu-worker": 1}
    assert gen.placement_group_bundles[0] == {"CPU": 4.0, "qvq-gpu-worker": 1,
                                              "memory": 8 * 2**30}
    runner = runner_deployment(config)._replica_config.ray_actor_options
    assert runner["resources"] == {"qvq-cpu-worker": 0.01}
