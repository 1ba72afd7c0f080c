"""Validate rendered objects as an API server would, without one.

Core kinds: ``kubernetes-validate`` (strict: unknown fields rejected) for a Kubernetes version.
KubeRay kinds: the CRD's openAPIV3Schema from ``../shared/kuberay/crds`` turned into JSON
Schema the way the API server reads it: defaults filled before ``required`` is checked,
unknown fields rejected unless ``x-kubernetes-preserve-unknown-fields``,
``x-kubernetes-int-or-string`` as integer-or-string, ``nullable`` as allowing null.
"""

from __future__ import annotations

import copy
import functools
import pathlib
from typing import Any

import jsonschema
import kubernetes_validate
import yaml


def _crd_dir() -> pathlib.Path:
    """``shared/kuberay/crds`` beside the checkout (``../shared``), or under $QVQ_SHARED_DIR."""
    import os

    root = pathlib.Path(__file__).resolve().parents[2]
    candidates = [pathlib.Path(os.environ["QVQ_SHARED_DIR"])] if "QVQ_SHARED_DIR" in os.environ \
        else []
    candidates += [root.parent / "shared", root / "shared", pathlib.Path("/work/shared")]
    for shared in candidates:
        if (shared / "kuberay" / "crds").is_dir():
            return shared / "kuberay" / "crds"
    raise FileNotFoundError("KubeRay CRDs not found: expected ../shared/kuberay/crds beside the "
                            "checkout (or set QVQ_SHARED_DIR)")


CRD_DIR = _crd_dir()
CRD_KINDS = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml",
             "RayJob": "ray.io_rayjobs.yaml"}
# Kinds of other operators the chart can render; no schema here to check them against.
UNCHECKED_KINDS = {"ServiceMonitor"}
KUBE_VERSIONS = ("1.30.0", "1.32.0")


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / CRD_KINDS[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _structural(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (Kubernetes dialect) -> JSON Schema."""
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    for key in ("properties", "patternProperties"):
        for child in node.get(key, {}).values():
            _structural(child)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _structural(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for child in node.get(key, []):
            _structural(child)
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    return node


def fill_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Set every missing property that has a default, at every depth (as the API server)."""
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                fill_defaults(child, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(schema.get("properties", {})):
                fill_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            fill_defaults(schema["items"], item)
    return value


def validate_object(obj: dict[str, Any], kube_version: str) -> None:
    """Raise with a readable message when ``obj`` would be rejected."""
    kind = obj["kind"]
    if kind in CRD_KINDS:
        schema = crd_schema(kind)
        instance = fill_defaults(schema, copy.deepcopy(obj))
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(instance),
                        key=lambda e: list(e.absolute_path))
        if errors:
            raise AssertionError(f"{kind}/{obj['metadata']['name']} violates the KubeRay CRD:\n"
                                 + "\n".join(f"  {'/'.join(map(str, e.absolute_path))}: "
                                             f"{e.message[:300]}" for e in errors[:10]))
        return
    if kind in UNCHECKED_KINDS:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["apiVersion"]
        return
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{kind}/{obj['metadata']['name']} is invalid for Kubernetes "
                             f"{kube_version}: {exc.message}") from None
