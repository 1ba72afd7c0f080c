"""Plain manifests in ``k8s/`` for users without Helm, generated from the chart.

``k8s/base`` is the chart rendered with its default values; each overlay is the chart rendered
with one of its ``ci/`` values files, written as JSON patches (RFC 6902) against the base plus
the objects only the overlay has. So ``kubectl kustomize k8s/overlays/<name>`` yields exactly
what ``helm template`` gives for those values, minus Helm's own bits (the test hook pod, the
``helm.sh/chart`` label; ``managed-by`` says kustomize). ``qvq k8s generate`` rewrites the
tree; ``qvq k8s check`` and a test fail when it has drifted from the chart.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import jsonpatch
import yaml

from serving.kube import chart

K8S_DIR = chart.REPO_ROOT / "k8s"
# overlay name -> values file of the chart's ci/ directory
OVERLAYS = {
    "dev-cpu": "tiny-cpu-values.yaml",
    "prod-qvq-72b": "qvq-72b-4xh100-values.yaml",
}
HEADER = ("# Generated from helm/qvq-serving by `qvq k8s generate`; do not edit by hand "
          "(tests fail when this drifts from the chart).\n")


def _plain(obj: dict[str, Any]) -> dict[str, Any]:
    """A chart object as a plain manifest: no Helm-only labels, anywhere in it."""
    obj = copy.deepcopy(obj)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            labels = node.get("labels")
            if isinstance(labels, dict) and labels.get("app.kubernetes.io/managed-by") == "Helm":
                labels.pop("helm.sh/chart", None)
                labels["app.kubernetes.io/managed-by"] = "kustomize"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return obj


def expected_objects(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What a kustomize user should get for these chart values."""
    return [_plain(o) for o in chart.objects(chart.render(values), hooks=False)]


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def _file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, inline patches) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)


def generate(chart_dir: pathlib.Path = chart.CHART_DIR) -> dict[str, str]:
    """Relative path under k8s/ -> file text, for the base and every overlay."""
    files: dict[str, str] = {}
    base = expected_objects(None)
    base_by_key = {_key(o): o for o in base}
    files["base/kustomization.yaml"] = HEADER + _dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [_file_name(o) for o in base]})
    for obj in base:
        files[f"base/{_file_name(obj)}"] = HEADER + _dump(obj)

    for overlay, values_file in OVERLAYS.items():
        wanted = expected_objects(chart.load_values(chart_dir / "ci" / values_file))
        wanted_keys = {_key(o) for o in wanted}
        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["../../base"]}
        patches = []
        for obj in wanted:
            key = _key(obj)
            if key not in base_by_key:
                kustomization["resources"].append(_file_name(obj))
                files[f"overlays/{overlay}/{_file_name(obj)}"] = HEADER + _dump(obj)
                continue
            ops = jsonpatch.make_patch(base_by_key[key], obj).patch
            if ops:
                path = f"patches/{_file_name(obj)}"
                files[f"overlays/{overlay}/{path}"] = HEADER + _dump(ops)
                patches.append({"path": path, "target": _target(obj)})
        for key, obj in base_by_key.items():
            if key not in wanted_keys:
                patches.append({"patch": _dump({"$patch": "delete",
                                                "apiVersion": obj["apiVersion"],
                                                "kind": obj["kind"],
                                                "metadata": {"name": obj["metadata"]["name"]}}),
                                "target": _target(obj)})
        if patches:
            kustomization["patches"] = patches
        files[f"overlays/{overlay}/kustomization.yaml"] = HEADER + _dump(kustomization)
    return files


def _target(obj: dict[str, Any]) -> dict[str, str]:
    group, _, version = obj["apiVersion"].rpartition("/")
    target = {"version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    if group:
        target = {"group": group, **target}
    return target


def write(out_dir: pathlib.Path = K8S_DIR) -> list[str]:
    """Rewrite the tree (stale generated files removed); returns the paths written."""
    files = generate()
    for old in [*out_dir.glob("base/**/*.yaml"), *out_dir.glob("overlays/**/*.yaml")]:
        if old.relative_to(out_dir).as_posix() not in files and old.read_text().startswith(
                HEADER):
            old.unlink()
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(files)


def drift(out_dir: pathlib.Path = K8S_DIR) -> list[str]:
    """Paths that differ from what the chart generates (missing, changed or stale)."""
    files = generate()
    found = {p.relative_to(out_dir).as_posix()
             for p in [*out_dir.glob("base/**/*.yaml"), *out_dir.glob("overlays/**/*.yaml")]}
    changed = [rel for rel, text in files.items()
               if not (out_dir / rel).exists() or (out_dir / rel).read_text() != text]
    return sorted(set(changed) | (found - set(files)))
