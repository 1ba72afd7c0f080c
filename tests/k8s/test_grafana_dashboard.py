"""The Grafana dashboard plots only metrics that exist, each under the name Ray exports, and the
chart ships it as a ConfigMap that Grafana's dashboard sidecar picks up."""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest

from serving.kube import chart
from tests.k8s.validation import KUBE_VERSIONS, validate_object

pytestmark = pytest.mark.k8s

DASHBOARD_FILE = chart.CHART_DIR / "dashboards" / "qvq-serving.json"
METRICS_SOURCE = chart.REPO_ROOT / "serving" / "metrics.py"

# Our metrics (serving/metrics.py) by kind, before Ray's export prefix and suffixes.
METRICS = {
    # router
    "qvq_api_requests": "counter", "qvq_api_request_seconds": "histogram",
    "qvq_rate_limited": "counter", "qvq_admission_rejected": "counter",
    "qvq_tokens": "counter", "qvq_request_images": "counter",
    "qvq_stream_time_to_first_token_seconds": "histogram",
    # preprocessor
    "qvq_image_stage_seconds": "histogram", "qvq_image_bytes": "histogram",
    "qvq_image_source_pixels": "histogram", "qvq_image_cache_lookups": "counter",
    "qvq_image_store_failures": "counter",
    # generator
    "qvq_time_to_first_token_seconds": "histogram", "qvq_engine_queue_seconds": "histogram",
    "qvq_generation_seconds": "histogram", "qvq_loop_guard_detections": "counter",
    "qvq_thinking_budget_exhausted": "counter", "qvq_final_answers": "counter",
    "qvq_reasoning_tokens": "histogram", "qvq_language_mixed_answers": "counter",
    "qvq_language_minority_fraction": "histogram",
    # batch runner
    "qvq_batch_lines": "counter", "qvq_batches_active": "gauge",
    "qvq_batch_lines_remaining": "gauge",
}
# Ray Serve's own, already exported under these names.
SERVE_METRICS = {"ray_serve_deployment_replica_healthy", "ray_serve_num_ongoing_http_requests",
                 "ray_serve_deployment_queued_queries"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
EXPORTED = SERVE_METRICS | {f"ray_{name}{suffix}" for name, kind in METRICS.items()
                            for suffix in SUFFIXES[kind]}
ROWS = ["Traffic", "Limits & backpressure", "Images", "Generation", "Reasoning", "Batch"]
METRIC_NAME = re.compile(r"\bray_[a-z_]+")


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD_FILE.read_text())


def graph_panels(dashboard):
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard):
    return [t["expr"] for p in graph_panels(dashboard) for t in p["targets"]]


def exported_names(text):
    return set(METRIC_NAME.findall(text))


def call_arguments(expr, function):
    """The argument text of every call of ``function`` in ``expr`` (parentheses balanced)."""
    out = []
    for match in re.finditer(rf"\b{function}\(", expr):
        depth, start = 1, match.end()
        for i in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            if depth == 0:
                out.append(expr[start:i])
                break
        else:
            raise AssertionError(f"unbalanced {function}( in {expr!r}")
    return out


def render_objects(values=None, **kw):
    return chart.objects(chart.render(values, **kw))


def dashboard_config_maps(objs):
    return [o for o in objs if o["kind"] == "ConfigMap"
            and o["metadata"]["name"].endswith("-dashboard")]


def enabled(**settings):
    return {"grafanaDashboard": {"enabled": True, **settings}}


# --- the dashboard ---------------------------------------------------------------------------

def test_dashboard_is_grafana_json_with_its_variables(dashboard):
    assert (dashboard["uid"], dashboard["title"], dashboard["schemaVersion"]) == (
        "qvq-serving", "qvq-serving", 39)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "key"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    key = variables["key"]
    assert key["type"] == "query" and key["includeAll"] is True
    assert key["query"] == key["definition"] == "label_values(ray_qvq_api_requests_total, key)"
    assert key["datasource"]["uid"] == "${datasource}"


def test_rows_are_the_operating_areas(dashboard):
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ROWS


def test_panel_ids_are_unique_and_the_grid_does_not_overlap(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    last_y = -1
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] >= 0 and pos["y"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        assert pos["y"] >= last_y, f"{panel['title']} is out of order"
        last_y = pos["y"]
        if panel["type"] == "row":
            assert (pos["x"], pos["w"], pos["h"]) == (0, 24, 1)
            assert panel["panels"] == [] and panel["collapsed"] is False
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_panel_and_target_queries_the_datasource_variable(dashboard):
    for panel in graph_panels(dashboard):
        assert panel["type"] in {"timeseries", "bargauge"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"].strip(), panel["title"]


def test_expressions_name_only_metrics_that_are_exported(dashboard):
    for expr in [*expressions(dashboard), "label_values(ray_qvq_api_requests_total, key)"]:
        unknown = exported_names(expr) - EXPORTED
        assert not unknown, f"{sorted(unknown)} in {expr!r} is not exported"
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), expr
        variables = set(re.findall(r"\$\{?(\w+)", expr))
        assert variables <= {"key", "__rate_interval", "__range"}, expr


def test_histogram_quantiles_read_buckets_by_le(dashboard):
    read = set()
    for expr in expressions(dashboard):
        outside = expr
        for args in call_arguments(expr, "histogram_quantile"):
            names = exported_names(args)
            assert names and all(n.endswith("_bucket") for n in names), expr
            groupings = re.findall(r"\bby \(([^)]*)\)", args)
            assert len(groupings) == 1, f"sum the buckets by (le, ...): {expr}"
            assert "le" in [label.strip() for label in groupings[0].split(",")], expr
            read |= names
            outside = outside.replace(args, "")
        assert not any(n.endswith("_bucket") for n in exported_names(outside)), expr
    # every histogram is shown as quantiles
    assert read == {f"ray_{name}_bucket" for name, kind in METRICS.items() if kind == "histogram"}


def test_counters_are_read_as_rates(dashboard):
    for expr in expressions(dashboard):
        for name in exported_names(expr):
            if name.endswith(("_total", "_bucket")):
                assert re.search(rf"\b(rate|increase)\({name}\b", expr), (name, expr)


def test_every_metric_is_plotted(dashboard):
    plotted = set().union(*map(exported_names, expressions(dashboard)))
    for name, kind in METRICS.items():
        shown = {f"ray_{name}{suffix}" for suffix in SUFFIXES[kind]} & plotted
        assert shown, f"{name} ({kind}) has no panel"
    assert SERVE_METRICS <= plotted


def test_metrics_the_code_declares_are_on_the_dashboard():
    """A metric added to serving/metrics.py fails here until the dashboard (and METRICS) has it."""
    declared = dict((name, kind.lower()) for kind, name in re.findall(
        r"metrics\.(Counter|Histogram|Gauge)\(\s*\"(\w+)\"", METRICS_SOURCE.read_text()))
    assert declared
    for name, kind in declared.items():
        assert METRICS.get(name) == kind, f"{name} ({kind}) is not on the dashboard"


def test_per_key_usage_covers_the_time_range(dashboard):
    (usage,) = [p for p in graph_panels(dashboard) if p["title"] == "Token usage by key"]
    (target,) = usage["targets"]
    assert usage["type"] == "bargauge" and target["instant"] is True
    assert "increase(ray_qvq_tokens_total{key=~\"$key\"}[$__range])" in target["expr"]


# --- the chart's ConfigMap -------------------------------------------------------------------

def test_dashboard_config_map_renders_only_when_enabled():
    assert dashboard_config_maps(render_objects()) == []
    assert len(dashboard_config_maps(render_objects(enabled()))) == 1


def test_config_map_carries_the_sidecar_label_and_the_dashboard():
    (cm,) = dashboard_config_maps(render_objects(enabled()))
    labels = cm["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"
    assert labels["app.kubernetes.io/instance"] == chart.RELEASE
    assert labels["app.kubernetes.io/component"] == "metrics"
    assert cm["metadata"]["name"] == "qvq-qvq-serving-dashboard"
    assert "namespace" not in cm["metadata"]  # the release namespace
    assert "annotations" not in cm["metadata"]
    assert cm["data"] == {"qvq-serving.json": DASHBOARD_FILE.read_text()}


def test_sidecar_label_namespace_folder_and_annotations_are_configurable():
    (cm,) = dashboard_config_maps(render_objects(enabled(
        label="example.com/dashboard", labelValue="qvq", namespace="monitoring",
        folder="Serving", annotations={"owner": "ml-platform"})))
    assert cm["metadata"]["labels"]["example.com/dashboard"] == "qvq"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Serving",
                                             "owner": "ml-platform"}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_config_map_validates(kube_version):
    for values in (enabled(), enabled(namespace="monitoring", folder="QVQ / serving")):
        (cm,) = dashboard_config_maps(render_objects(values))
        validate_object(cm, kube_version)


def test_production_ci_values_ship_the_dashboard():
    values = chart.load_values(chart.CHART_DIR / "ci" / "qvq-72b-4xh100-values.yaml")
    assert values["grafanaDashboard"]["enabled"] is True
    (cm,) = dashboard_config_maps(render_objects(values))
    assert json.loads(cm["data"]["qvq-serving.json"])["uid"] == "qvq-serving"


@pytest.mark.parametrize("settings, message", [
    ({"labelValue": 1}, "at '/grafanaDashboard/labelValue'"),
    ({"label": ""}, "at '/grafanaDashboard/label'"),
    ({"namespace": "Monitoring"}, "at '/grafanaDashboard/namespace'"),
    ({"folders": "x"}, "additional properties 'folders' not allowed"),
])
def test_bad_dashboard_values_fail_with_the_schema_message(settings, message):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(enabled(**settings))
    assert message in str(err.value)
