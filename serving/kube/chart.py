"""The Helm chart as data: render it offline and generate its values schema.

``values.schema.json`` is generated, not hand-kept: the chart's own keys are described here,
and ``serve.config`` / ``storage`` / ``auth`` take their schema from the pydantic models in
:mod:`serving.config`, so a key the app would reject is rejected by ``helm install`` first.
``qvq k8s generate`` rewrites it; a test fails when the file and this module disagree.

Rendering uses helm-python-sdk (Helm's Go SDK, no cluster, no ``helm`` binary); it is a
development/test dependency, imported only when rendering.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import yaml

from serving.config import AutoscalingConfig, ServingConfig
from serving.roles import (
    APP_IMPORT_PATH,
    CHAT_APP_IMPORT_PATH,
    CHAT_APP_SUFFIX,
    CHAT_ROUTE_PREFIX,
    DEPLOYMENT_OF,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "qvq-serving"
RELEASE = "qvq"
NAMESPACE = "qvq"

# The serving config's sections that the chart fills from its storage and auth groups.
_CHART_OWNED_SECTIONS = ("storage", "auth")
_TP_SIZES = (2, 4, 8, 16)


def render(values: dict[str, Any] | None = None, *, chart_dir: pathlib.Path = CHART_DIR,
           release: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, exactly as ``helm template`` would produce it."""
    import helm_python as helm

    with helm.Chart.load(str(chart_dir)) as chart:
        return chart.render(values or {}, name=release, namespace=namespace)


def objects(rendered: dict[str, str], *, hooks: bool = True) -> list[dict[str, Any]]:
    """The Kubernetes objects of a render (NOTES.txt dropped; test hooks kept if ``hooks``)."""
    out = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if not doc:
                continue
            annotations = doc.get("metadata", {}).get("annotations") or {}
            if not hooks and "helm.sh/hook" in annotations:
                continue
            out.append(doc)
    return out


def load_values(path: pathlib.Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def serving_config_of(rayservice: dict[str, Any]) -> ServingConfig:
    """The app config inside a rendered RayService's serveConfigV2, validated by our model."""
    from serving.config import config_from_dict

    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = [a for a in serve_config["applications"]
              if a["import_path"] == APP_IMPORT_PATH]
    return config_from_dict(app["args"], source="serveConfigV2", environ={})


# --- values.schema.json -------------------------------------------------------------------

def _obj(properties: dict[str, Any], required: list[str] | None = None,
         description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False,
                              "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_ANY_OBJ = {"type": "object"}
_LIST = {"type": "array"}
_COUNT = {"type": "integer", "minimum": 0}
_QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9.]+[a-zA-Z]*$"},
                       {"type": "number", "minimum": 0}]}
# Kubernetes label keys ([prefix/]name) and values.
_LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
              r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = r"^$|^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
_SECRET_REF = _obj({"name": {"type": "string", "pattern": r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                             "description": "Secret name (empty: not used)."},
                    "key": {"type": "string", "minLength": 1, "description": "Key in the Secret."}},
                   required=["name", "key"])


def _pod_group(description: str, *, scaled: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "resources": _obj({"requests": {"type": "object",
                                        "additionalProperties": _QUANTITY},
                           "limits": {"type": "object", "additionalProperties": _QUANTITY}},
                          required=["requests", "limits"]),
        "shmSize": {**_QUANTITY, "description": "Size of the memory-backed /dev/shm."},
        "rayStartParams": {"type": "object", "additionalProperties": _STR},
        "env": _LIST, "nodeSelector": {"type": "object", "additionalProperties": _STR},
        "tolerations": _LIST, "affinity": _ANY_OBJ,
        "podLabels": {"type": "object", "additionalProperties": _STR},
        "podAnnotations": {"type": "object", "additionalProperties": _STR},
    }
    if scaled:
        props |= {"replicas": {**_COUNT, "description": "Pods at install time."},
                  "minReplicas": {**_COUNT, "description": "Fewest pods the autoscaler keeps."},
                  "maxReplicas": {"type": "integer", "minimum": 1,
                                  "description": "Most pods the autoscaler adds."}}
    return _obj(props, description=description)


def values_schema() -> dict[str, Any]:
    """The chart's values.schema.json (draft 2020-12)."""
    config = ServingConfig.model_json_schema()
    defs: dict[str, Any] = copy.deepcopy(config.pop("$defs"))
    serve_config = copy.deepcopy(config)
    for section in _CHART_OWNED_SECTIONS:
        serve_config["properties"].pop(section)
    serve_config["description"] = ("serving/config.py's ServingConfig without storage and auth "
                                   "(the chart's storage and auth groups fill those).")
    defs["ServeConfig"] = serve_config
    storage = copy.deepcopy(defs["StorageConfig"])
    storage["properties"]["credentialsSecret"] = {
        **_SECRET_REF, "description": "Secret with an AWS shared-credentials file, mounted and "
                                      "used as storage.s3.credentials_file."}
    defs["ChartStorage"] = storage

    gpu_workers = _pod_group("GPU worker group (vLLM generators).", scaled=True)
    gpu_workers["properties"] |= {
        "enabled": _BOOL,
        "gpusPerPod": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                       "description": "GPUs per pod (null: the tensor parallel size); a "
                                      "multiple of serve.config.model.tensor_parallel_size."},
        "gpuResourceName": {"type": "string", "minLength": 1},
    }
    weights = _obj({
        "source": {"enum": ["pvc", "s3", "hub", "tiny", "image"],
                   "description": "Where the generator's weights come from."},
        "mountPath": {"type": "string", "pattern": "^/"},
        "pvc": _obj({"claimName": _STR, "subPath": _STR, "readOnly": _BOOL}),
        "s3": _obj({"uri": {"type": "string", "pattern": r"^$|^s3://[a-z0-9][a-z0-9.-]{1,61}/"},
                    "sizeLimit": _QUANTITY}),
    }, required=["source", "mountPath"])
    weights["allOf"] = [
        {"if": {"properties": {"source": {"const": "pvc"}}},
         "then": {"properties": {"pvc": {"properties": {"claimName": {"minLength": 1}}}}}},
        {"if": {"properties": {"source": {"const": "s3"}}},
         "then": {"properties": {"s3": {"properties": {"uri": {"minLength": 6}}}}}},
    ]
    root = _obj({
        "global": _ANY_OBJ,
        "nameOverride": _STR, "fullnameOverride": _STR,
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "image": _obj({"repository": {"type": "string", "minLength": 1}, "tag": _STR,
                       "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
                      required=["repository"]),
        "imagePullSecrets": {"type": "array", "items": _obj({"name": _STR}, ["name"])},
        "upgradeStrategy": _obj({
            "type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"],
                     "description": "KubeRay's RayService upgrade strategy."},
            "clusterUpgradeOptions": _ANY_OBJ}, required=["type"]),
        "rayClusterDeletionDelaySeconds": _COUNT,
        "autoscaler": _obj({"enabled": _BOOL, "options": _ANY_OBJ}),
        "gcsFaultTolerance": {**_obj({
            "enabled": _BOOL,
            "redisAddress": {"type": "string", "pattern": r"^$|^[^\s:]+:[0-9]+$",
                             "description": "host:port of the Redis."},
            "redisPasswordSecret": _SECRET_REF,
            "externalStorageNamespace": _STR}),
            "if": {"properties": {"enabled": {"const": True}}, "required": ["enabled"]},
            "then": {"properties": {"redisAddress": {"minLength": 3}}}},
        "head": _pod_group("Head pod (no replicas, no GPUs).", scaled=False),
        "cpuWorkers": _pod_group("CPU worker group (router, preprocessors).", scaled=True),
        "gpuWorkers": gpu_workers,
        "serve": _obj({
            "config": {"$ref": "#/$defs/ServeConfig"},
            "modelWeights": weights,
            "hubTokenSecret": _SECRET_REF,
            "env": _LIST,
            "deploymentUnhealthySecondThreshold": {"type": "integer", "minimum": 1},
        }, required=["config", "modelWeights"]),
        "storage": {"$ref": "#/$defs/ChartStorage"},
        "auth": _obj({"apiKeysSecret": _SECRET_REF,
                      "apiKeyHashes": {"type": "array", "items": {"$ref": "#/$defs/ApiKeyHash"}}}),
        "service": _obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                         "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                         "annotations": {"type": "object", "additionalProperties": _STR}}),
        "ingress": _obj({"enabled": _BOOL, "className": _STR,
                         "annotations": {"type": "object", "additionalProperties": _STR},
                         "hosts": _LIST, "tls": _LIST}),
        "serviceMonitor": _obj({"enabled": _BOOL, "interval": _STR,
                                "labels": {"type": "object", "additionalProperties": _STR}}),
        "grafanaDashboard": _obj({
            "enabled": _BOOL,
            "label": {"type": "string", "maxLength": 316, "pattern": _LABEL_KEY,
                      "description": "Label the Grafana sidecar selects ConfigMaps by."},
            "labelValue": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE,
                           "description": "Value of that label (a string: quote numbers)."},
            "namespace": {"type": "string", "maxLength": 63,
                          "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                          "description": "Namespace of the ConfigMap (empty: the release's)."},
            "annotations": {"type": "object", "additionalProperties": _STR},
            "folder": {"type": "string",
                       "description": "Grafana folder (the grafana_folder annotation)."},
        }),
        "podDisruptionBudget": _obj({"enabled": _BOOL,
                                     "maxUnavailable": {"type": "integer", "minimum": 1}}),
        "networkPolicy": _obj({"enabled": _BOOL, "apiFrom": _LIST, "metricsFrom": _LIST}),
        "batchJob": _obj({
            "enabled": _BOOL,
            "input": {"type": "string", "pattern": r"^$|^s3://[a-z0-9][a-z0-9.-]{1,61}/.+"},
            "owner": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"},
            "maxConcurrency": {"type": "integer", "minimum": 1},
            "submissionMode": {"enum": ["SidecarMode", "K8sJobMode", "HTTPMode"]},
            "activeDeadlineSeconds": {"type": "integer", "minimum": 60},
            "ttlSecondsAfterFinished": _COUNT,
            "cpuWorkers": {"type": "integer", "minimum": 1},
            "gpuWorkers": _COUNT,
        }),
        "tests": _obj({"enabled": _BOOL}),
    }, required=["rayVersion", "image", "head", "cpuWorkers", "gpuWorkers", "serve", "storage",
                 "auth"])
    # A generator's tensor-parallel workers must share one pod: gpusPerPod % TP == 0.
    root["allOf"] = [
        {"if": {"properties": {"serve": {"properties": {"config": {"properties": {
            "model": {"properties": {"tensor_parallel_size": {"const": tp}},
                      "required": ["tensor_parallel_size"]}}}}}}},
         "then": {"properties": {"gpuWorkers": {"properties": {
             "gpusPerPod": {"multipleOf": tp}}}}}}
        for tp in _TP_SIZES
    ]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "qvq-serving Helm values",
            **root, "$defs": defs}


def schema_text() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


# --- files/roles.yaml -------------------------------------------------------------------------

ROLES_FILE = "files/roles.yaml"


def roles_text() -> str:
    """The roles table (serving.roles.ROLES) and Serve's autoscaling defaults as the chart's
    templates read them (``.Files.Get``): the deployment names and the bounds its serveConfigV2
    overrides fill in are the app's own, never a copy typed into a template."""
    data = {"deployments": DEPLOYMENT_OF,
            "autoscalingDefaults": AutoscalingConfig().model_dump(mode="json"),
            "applications": {"main": {"import_path": APP_IMPORT_PATH, "route_prefix": "/"},
                             "chat": {"import_path": CHAT_APP_IMPORT_PATH,
                                      "route_prefix": CHAT_ROUTE_PREFIX,
                                      "name_suffix": CHAT_APP_SUFFIX}}}
    return ("# Generated by `qvq k8s generate` from serving/roles.py and serving/config.py; "
            "do not edit.\n" + yaml.safe_dump(data, sort_keys=False))


# --- values table of the chart README ---------------------------------------------------------

TABLE_BEGIN = "<!-- values-table:begin (generated by `qvq k8s generate`) -->"
TABLE_END = "<!-- values-table:end -->"


def values_table(chart_dir: pathlib.Path = CHART_DIR) -> str:
    """Markdown table of every ``# --`` documented key of values.yaml with its default."""
    import re

    text = (chart_dir / "values.yaml").read_text()
    defaults = yaml.safe_load(text)
    rows, stack, pending = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending += " " + stripped[1:].strip()
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not match:
            pending = None
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if pending is not None:
            path = [key for _, key in stack]
            value: Any = defaults
            for key in path:
                value = value[key]
            shown = json.dumps(value)
            shown = f"`{shown}`" if len(shown) <= 48 else "see values.yaml"
            rows.append(f"| `{'.'.join(path)}` | {shown} | {pending.replace('|', '/')} |")
            pending = None
    return "\n".join([TABLE_BEGIN, "| key | default | description |", "|---|---|---|",
                      *rows, TABLE_END])


def readme_with_table(readme: str, chart_dir: pathlib.Path = CHART_DIR) -> str:
    head, _, rest = readme.partition(TABLE_BEGIN)
    _, _, tail = rest.partition(TABLE_END)
    return head + values_table(chart_dir) + tail
