"""The Helm chart renders, lints and validates for every ci/ values file, and refuses bad values
with the schema's message before anything reaches a cluster."""

from __future__ import annotations

import copy

import helm_python as helm
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.kube import chart
from serving.roles import applications, generator_app_name
from tests.k8s.validation import KUBE_VERSIONS, validate_object

pytestmark = pytest.mark.k8s

CI_VALUES = sorted(p.name for p in (chart.CHART_DIR / "ci").glob("*-values.yaml"))


def render_objects(values=None, **kw):
    return chart.objects(chart.render(values, **kw))


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def rayservice(objs):
    (svc,) = by_kind(objs, "RayService")
    return svc


def groups(svc):
    return {g["groupName"]: g for g in svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


@pytest.fixture(scope="module", params=[None, *CI_VALUES])
def rendered(request):
    values = chart.load_values(chart.CHART_DIR / "ci" / request.param) if request.param else None
    return request.param, values, render_objects(values)


def test_ci_values_files_exist():
    assert CI_VALUES == ["qvq-72b-4xh100-values.yaml", "qvq-72b-8xa100-values.yaml",
                         "tiny-autoscaling-values.yaml", "tiny-cpu-values.yaml",
                         "tiny-gpu-group-values.yaml"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", [None, *CI_VALUES])
def test_lint_strict(values_file, kube_version):
    values = chart.load_values(chart.CHART_DIR / "ci" / values_file) if values_file else None
    report = helm.lint(str(chart.CHART_DIR), values, strict=True,
                       kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_validates(rendered, kube_version):
    _, _, objs = rendered
    assert {"RayService", "NetworkPolicy", "PodDisruptionBudget", "Pod"} <= {
        o["kind"] for o in objs}
    for obj in objs:
        validate_object(obj, kube_version)


def test_serve_config_inside_is_our_config(rendered):
    _, values, objs = rendered
    svc = rayservice(objs)
    serve_config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)  # what Ray's Serve REST API accepts
    config = chart.serving_config_of(svc)
    # the applications our code builds from that config, with the same args each
    apps = serve_config["applications"]
    assert [(a["name"], a["route_prefix"]) for a in apps] == applications(config)
    assert [a["import_path"] for a in apps] == [
        "serving.app:app_builder", "serving.app:chat_app_builder"][:len(apps)]
    assert all(a["args"] == apps[0]["args"] for a in apps)
    # each deployment's override sits in the application that runs it
    held = {a["name"]: {d["name"] for d in a["deployments"]} for a in apps}
    assert held[generator_app_name(config)] >= {"QVQGenerator"}
    assert held[config.app_name] >= {"Router", "ImagePreprocessor"}
    expected = copy.deepcopy((values or {}).get("serve", {}).get("config", {}))
    model = expected.get("model", {})
    for field, value in model.items():
        assert getattr(config.model, field) == value, field
    assert config.storage.backend == "s3"


def test_chat_entry_router_renders_one_application_with_every_override():
    svc = rayservice(render_objects({"serve": {"config": {"server": {"chat_entry": "router"}}}}))
    serve_config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    assert (app["name"], app["import_path"], app["route_prefix"]) == (
        "qvq", "serving.app:app_builder", "/")
    assert [d["name"] for d in app["deployments"]] == ["Router", "ImagePreprocessor",
                                                       "QVQGenerator"]
    assert chart.serving_config_of(svc).server.chat_entry == "router"


def test_head_holds_no_gpus_and_runs_no_replicas(rendered):
    _, _, objs = rendered
    head = rayservice(objs)["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["num-gpus"] == "0"
    (container,) = head["template"]["spec"]["containers"]
    assert not any("gpu" in k for k in container["resources"]["limits"])


def test_gpu_group_holds_tensor_parallel_gpus_requests_equal_limits(rendered):
    name, values, objs = rendered
    svc = rayservice(objs)
    config = chart.serving_config_of(svc)
    tp = config.model.tensor_parallel_size
    grp = groups(svc)
    if name == "tiny-cpu-values.yaml":
        assert set(grp) == {"cpu-workers"}
        return
    gpu = grp["gpu-workers"]
    (container,) = gpu["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
    assert limits["nvidia.com/gpu"] % tp == 0
    assert gpu["rayStartParams"]["num-gpus"] == str(limits["nvidia.com/gpu"])
    # one generator replica needs its CPU bundle plus one CPU per tensor-parallel worker
    assert int(limits["cpu"]) >= config.deployments.generator.num_cpus + tp
    shm = {v["name"]: v for v in gpu["template"]["spec"]["volumes"]}["dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"
    assert config.model.path.startswith(mounts["model-weights"] + "/")
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def test_cpu_deployments_are_pinned_to_the_cpu_group(rendered):
    _, _, objs = rendered
    svc = rayservice(objs)
    config = chart.serving_config_of(svc)
    cpu = groups(svc)["cpu-workers"]
    advertised = yaml.safe_load(yaml.safe_load(cpu["rayStartParams"]["resources"]))
    for dep in (config.deployments.router, config.deployments.preprocessor):
        assert set(dep.resources) <= set(advertised)
    assert set(config.batch.resources) <= set(advertised)


def test_roles_are_labelled_and_selectors_match_pods(rendered):
    _, _, objs = rendered
    svc = rayservice(objs)
    spec = svc["spec"]["rayClusterConfig"]
    pods = {"head": spec["headGroupSpec"]["template"]}
    pods |= {g["groupName"].rstrip("s"): g["template"] for g in spec["workerGroupSpecs"]}
    for role, template in pods.items():
        labels = template["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == role
        assert labels["app.kubernetes.io/instance"] == chart.RELEASE
    for pdb in by_kind(objs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [r for r, t in pods.items()
                   if selector.items() <= t["metadata"]["labels"].items()]
        assert matched == [selector["app.kubernetes.io/component"]]
    (policy,) = by_kind(objs, "NetworkPolicy")
    for template in pods.values():
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
            template["metadata"]["labels"].items()
    for obj in objs:
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"]


def test_secrets_only_by_reference():
    values = chart.load_values(chart.CHART_DIR / "ci" / "qvq-72b-8xa100-values.yaml")
    values["serve"]["hubTokenSecret"] = {"name": "hf-token", "key": "token"}
    objs = render_objects(values)
    assert not by_kind(objs, "Secret")
    svc = rayservice(objs)
    config = chart.serving_config_of(svc)
    assert config.storage.s3.credentials_file == "/var/run/secrets/qvq/s3/credentials"
    assert config.auth.api_keys_file == "/var/run/secrets/qvq/api-keys/keys"
    gpu = groups(svc)["gpu-workers"]["template"]["spec"]
    volumes = {v["name"]: v for v in gpu["volumes"]}
    assert volumes["s3-credentials"]["secret"]["secretName"] == "qvq-s3"
    assert volumes["api-keys"]["secret"]["secretName"] == "qvq-api-keys"
    env = {e["name"]: e for e in gpu["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    # the init container downloads the weights with the same mounted credentials
    (init,) = gpu["initContainers"]
    assert init["command"][:3] == ["qvq", "model", "download"]
    args = dict(zip(init["command"][3::2], init["command"][4::2], strict=False))
    assert args["--source"] == "s3://qvq-models/QVQ-72B-Preview/"
    assert args["--dest"] == config.model.path
    assert args["--credentials-file"] == config.storage.s3.credentials_file


def test_upgrade_strategy_and_autoscaling_are_exposed():
    svc = rayservice(render_objects({"upgradeStrategy": {"type": "None"},
                                     "autoscaler": {"enabled": False}}))
    assert svc["spec"]["upgradeStrategy"] == {"type": "None"}
    assert svc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is False
    svc = rayservice(render_objects())
    assert svc["spec"]["upgradeStrategy"]["type"] == "NewCluster"
    assert svc["spec"]["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] == 600


def test_api_service_ingress_and_monitoring():
    objs = render_objects(chart.load_values(chart.CHART_DIR / "ci" /
                                            "qvq-72b-4xh100-values.yaml"))
    svc = rayservice(objs)
    api = svc["spec"]["serveService"]
    (ingress,) = by_kind(objs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": api["metadata"]["name"], "port": {"number": 8000}}
    (monitor,) = by_kind(objs, "ServiceMonitor")
    (metrics,) = [s for s in by_kind(objs, "Service") if s["metadata"]["name"].endswith(
        "-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        metrics["metadata"]["labels"].items()


def test_helm_test_pod_calls_v1_models(rendered):
    _, _, objs = rendered
    (pod,) = [p for p in by_kind(objs, "Pod")
              if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    api = rayservice(objs)["spec"]["serveService"]["metadata"]["name"]
    assert env["QVQ_API_URL"] == f"http://{api}:8000/v1/models"


def test_batch_rayjob_runs_the_same_app():
    values = chart.load_values(chart.CHART_DIR / "ci" / "qvq-72b-8xa100-values.yaml")
    objs = render_objects(values)
    (job,) = by_kind(objs, "RayJob")
    assert job["spec"]["entrypoint"].startswith("qvq batch run --config /etc/qvq/serving.yaml")
    assert "s3://qvq-serving/batch-inputs/nightly.jsonl" in job["spec"]["entrypoint"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    cluster = job["spec"]["rayClusterSpec"]
    assert {g["groupName"]: g["replicas"] for g in cluster["workerGroupSpecs"]} == {
        "cpu-workers": 2, "gpu-workers": 4}
    (config_map,) = [c for c in by_kind(objs, "ConfigMap")
                     if c["metadata"]["name"].endswith("-batch")]
    from serving.config import config_from_dict

    config = config_from_dict(yaml.safe_load(config_map["data"]["serving.yaml"]), environ={})
    assert config.batch.max_concurrency == 64
    # 4 pods x 8 GPUs / TP 8: the temporary cluster runs exactly 4 generators
    gen = config.deployments.generator.autoscaling
    assert (gen.min_replicas, gen.max_replicas) == (4, 4)
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert {"name": "batch-config", "configMap": {"name": config_map["metadata"]["name"]}} in \
        head["volumes"]


@pytest.mark.parametrize("values, message", [
    ({"cpuWorkers": {"minReplicas": -1}}, "at '/cpuWorkers/minReplicas': minimum: got -1"),
    ({"gpuWorkers": {"maxReplicas": 0}}, "at '/gpuWorkers/maxReplicas': minimum: got 0"),
    ({"gpuWorkers": {"gpusPerPod": 6}}, "at '/gpuWorkers/gpusPerPod': multipleOf: got 6, want 4"),
    ({"gpuWorkers": {"gpusPerPod": 4}, "serve": {"config": {"model": {
        "tensor_parallel_size": 8}}}}, "multipleOf: got 4, want 8"),
    ({"serve": {"config": {"model": {"path": None}}}},
     "at '/serve/config/model': missing property 'path'"),
    ({"serve": {"config": {"model": None}}}, "at '/serve/config': missing property 'model'"),
    ({"serve": {"config": {"modle": {}}}},
     "at '/serve/config': additional properties 'modle' not allowed"),
    ({"serve": {"config": {"deployments": {"generator": {"num_gpu_per_worker": 1}}}}},
     "additional properties 'num_gpu_per_worker' not allowed"),
    ({"serve": {"modelWeights": {"source": "nfs"}}}, "at '/serve/modelWeights/source'"),
    ({"serve": {"modelWeights": {"source": "s3"}}}, "at '/serve/modelWeights/s3/uri'"),
    ({"upgradeStrategy": {"type": "Recreate"}}, "at '/upgradeStrategy/type'"),
    ({"storage": {"s3": {"bucket": "x"}}}, "at '/storage/s3/bucket'"),
    ({"image": {"repository": ""}}, "at '/image/repository'"),
])
def test_bad_values_fail_with_the_schema_message(values, message):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values)
    assert message in str(err.value)


@pytest.mark.parametrize("values, message", [
    ({"cpuWorkers": {"minReplicas": 5}},
     "cpuWorkers.replicas (2) must lie between minReplicas (5) and maxReplicas (8)"),
    ({"gpuWorkers": {"minReplicas": 3, "maxReplicas": 2, "replicas": 2}},
     "gpuWorkers.minReplicas (3) must not exceed gpuWorkers.maxReplicas (2)"),
    ({"gpuWorkers": {"enabled": False}},
     "tensor_parallel_size is 4 but gpuWorkers.enabled is false"),
    ({"serve": {"modelWeights": {"source": "s3", "s3": {"uri": "s3://models/qvq/"},
                                 "mountPath": "/weights"}}},
     "serve.config.model.path (/models/QVQ-72B-Preview) must be under "
     "serve.modelWeights.mountPath (/weights)"),
    ({"batchJob": {"enabled": True}}, "batchJob.input (s3://bucket/key of the JSONL file) is "
                                      "required"),
])
def test_impossible_combinations_fail_with_a_message(values, message):
    with pytest.raises(helm.HelmError) as err:
        chart.render(values)
    assert message in str(err.value)


def test_values_schema_is_generated_from_the_config_model():
    on_disk = (chart.CHART_DIR / "values.schema.json").read_text()
    assert on_disk == chart.schema_text(), "values.schema.json is stale: run `qvq k8s generate`"


def test_readme_values_table_is_current_and_documents_the_groups():
    readme = (chart.CHART_DIR / "README.md").read_text()
    assert readme == chart.readme_with_table(readme), "run `qvq k8s generate`"
    for key in ("gpuWorkers.gpusPerPod", "upgradeStrategy", "serve.modelWeights.source",
                "storage.credentialsSecret", "auth.apiKeysSecret", "batchJob.input"):
        assert f"| `{key}` |" in readme, key


def test_release_names_are_cut_for_kuberay():
    objs = render_objects(release="a-very-long-release-name-for-a-production-cluster")
    name = rayservice(objs)["metadata"]["name"]
    assert len(name) <= 40 and not name.endswith("-")


def test_deployment_overrides_equal_what_the_code_sets(rendered):
    _, _, objs = rendered
    svc = rayservice(objs)
    config = chart.serving_config_of(svc)
    apps = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    overrides = {d["name"]: d["autoscaling_config"] for app in apps for d in app["deployments"]}
    roles = {"Router": config.deployments.router, "ImagePreprocessor":
             config.deployments.preprocessor, "QVQGenerator": config.deployments.generator}
    assert set(overrides) == set(roles)
    for name, dep in roles.items():
        assert overrides[name] == dep.autoscaling.to_serve(), name


def test_scaling_a_deployment_of_the_rendered_service_is_in_place():
    from serving.kube.rayservice import _code_version, plan_deployment_scale

    svc = rayservice(render_objects())
    (patch,) = plan_deployment_scale(svc, "generator", 2, 6)
    new = yaml.safe_load([op for op in patch.ops if op["op"] == "replace"][0]["value"])
    old = yaml.safe_load(svc["spec"]["serveConfigV2"])
    # the generator is the chat application's (chat_entry generator): only it changes
    assert new["applications"][0] == old["applications"][0]
    chat_new, chat_old = new["applications"][1], old["applications"][1]
    assert _code_version(chat_new) == _code_version(chat_old)
    assert chat_new["args"] == chat_old["args"]
    gen = {d["name"]: d for d in chat_new["deployments"]}["QVQGenerator"]
    assert (gen["autoscaling_config"]["min_replicas"],
            gen["autoscaling_config"]["max_replicas"]) == (2, 6)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_gcs_fault_tolerance_renders_kuberays_options(kube_version):
    values = {"gcsFaultTolerance": {
        "enabled": True, "redisAddress": "redis.qvq.svc.cluster.local:6379",
        "redisPasswordSecret": {"name": "qvq-redis", "key": "password"},
        "externalStorageNamespace": "qvq-prod"}}
    objs = render_objects(values)
    svc = rayservice(objs)
    validate_object(svc, kube_version)  # against KubeRay's RayService CRD schema
    assert svc["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis.qvq.svc.cluster.local:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "qvq-redis",
                                                         "key": "password"}}},
        "externalStorageNamespace": "qvq-prod"}
    off = rayservice(render_objects(None))
    assert "gcsFaultToleranceOptions" not in off["spec"]["rayClusterConfig"]


def test_gcs_fault_tolerance_needs_a_redis_address():
    with pytest.raises(Exception, match="redisAddress"):
        render_objects({"gcsFaultTolerance": {"enabled": True}})
