"""k8s/ (kustomize base + overlays) equals the chart's output, and `kubectl kustomize` builds it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from serving.kube import chart, kustomize
from tests.k8s.validation import KUBE_VERSIONS, validate_object

pytestmark = pytest.mark.k8s


def kubectl_kustomize(path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) must be on PATH for these tests"
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_key(objs):
    return {(o["apiVersion"], o["kind"], o["metadata"]["name"]): o for o in objs}


def test_k8s_tree_is_what_the_chart_generates():
    drifted = kustomize.drift()
    assert drifted == [], f"k8s/ drifted from the chart: {drifted}; run `qvq k8s generate`"


@pytest.mark.parametrize("overlay", sorted(kustomize.OVERLAYS))
def test_overlay_builds_to_the_chart_render(overlay):
    built = by_key(kubectl_kustomize(kustomize.K8S_DIR / "overlays" / overlay))
    values = chart.load_values(chart.CHART_DIR / "ci" / kustomize.OVERLAYS[overlay])
    expected = by_key(kustomize.expected_objects(values))
    assert sorted(built) == sorted(expected)
    for key, obj in expected.items():
        assert built[key] == obj, key
    for obj in built.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize"
        for kube_version in KUBE_VERSIONS:
            validate_object(obj, kube_version)


def test_base_builds_to_the_default_render():
    built = by_key(kubectl_kustomize(kustomize.K8S_DIR / "base"))
    assert built == by_key(kustomize.expected_objects(None))


def test_drift_is_detected(tmp_path):
    kustomize.write(tmp_path)
    assert kustomize.drift(tmp_path) == []
    patch = tmp_path / "overlays" / "dev-cpu" / "patches" / "rayservice-qvq-qvq-serving.yaml"
    patch.write_text(patch.read_text().replace("max_model_len: 4096", "max_model_len: 8192"))
    stale = tmp_path / "base" / "service-old.yaml"
    stale.write_text(kustomize.HEADER)
    assert kustomize.drift(tmp_path) == ["base/service-old.yaml",
                                         "overlays/dev-cpu/patches/rayservice-qvq-qvq-serving.yaml"]
    kustomize.write(tmp_path)
    assert kustomize.drift(tmp_path) == []
