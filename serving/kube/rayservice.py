"""The qvq RayService as ``kubectl-qvq`` sees it: find it, sum up its state, plan scale patches.

Why a group scale patches two kinds of object: KubeRay leaves ``replicas``, ``minReplicas``
and ``maxReplicas`` of worker groups out when it compares a RayService's ``rayClusterConfig``
with its running RayCluster (they belong to the autoscaler), so a change there alone never
reaches the running cluster. ``scale GROUP`` therefore patches the RayService (kept for the
next cluster) and the active and pending RayClusters (effective now).

Why a deployment scale writes an override instead of ``args``: KubeRay sends a changed
``serveConfigV2`` to the running cluster's Serve, which hashes the app's ``args`` into the code
version of every deployment of the app (``get_app_code_version``), so new args redeploy all
replicas, the 72B generator included. An ``autoscaling_config`` in the app's ``deployments``
list is applied on top of the built app instead; as long as the code version stays the same,
Serve changes the deployment's target in place, without restarting replicas. Serve replaces the
whole ``autoscaling_config`` with the override (missing keys take Serve's defaults), so we
always write a complete one. The one exception: Ray 2.60 also puts the list of the app's
autoscaling overrides into the code version, so the *first* override of a deployment restarts
every replica once; :func:`plan_deployment_scale` checks that with Serve's own function and
says so.

Every patch is a JSON patch that starts with ``test`` ops on the values it was computed from,
so a concurrent change (an autoscaler step, another operator) fails it instead of being lost.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from serving.config import AutoscalingConfig, ServingConfig, config_from_dict
from serving.kube.cluster import (
    Cluster,
    ConflictError,
    KubeError,
    KubeRayMissingError,
    RayServiceNotFoundError,
    ScaleError,
    api_errors,
)
from serving.roles import APP_IMPORT_PATH, CHAT_APP_IMPORT_PATH, DEPLOYMENT_OF

GROUP, VERSION = "ray.io", "v1"
NAME_LABEL = "app.kubernetes.io/name"
NAME_LABEL_VALUE = "qvq-serving"
DEPLOYMENT_ROLES = tuple(DEPLOYMENT_OF)
API_PORT = 8000
GPU_RESOURCE = "nvidia.com/gpu"
JSON_PATCH = "application/json-patch+json"
HELM_NOTE = ("the Helm values still hold the old bounds: copy the new ones there; a later "
             "'helm upgrade' that rewrites serveConfigV2 drops this override")


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return default
        obj = obj[key]
    return obj


class RayServices:
    """Reads and patches ray.io/v1 RayServices, their RayClusters and pods in one namespace."""

    def __init__(self, cluster: Cluster, namespace: str | None = None):
        self.cluster = cluster
        self.namespace = namespace or cluster.namespace
        self._custom = CustomObjectsApi(cluster.api)
        self._core = CoreV1Api(cluster.api)

    def _require_kuberay(self) -> None:
        try:
            resp = self._custom.get_api_resources(GROUP, VERSION, _preload_content=False)
            served = {r.get("name") for r in json.loads(resp.data).get("resources") or []}
        except ApiException as exc:
            if exc.status != 404:
                raise
            served = set()
        if "rayservices" not in served:
            raise KubeRayMissingError(
                f"KubeRay is not installed in this cluster: the API server does not serve "
                f"{GROUP}/{VERSION} rayservices ({self.cluster.host}); install the KubeRay "
                f"operator and its CRDs first")

    def get(self, name: str) -> dict:
        with api_errors(self.cluster, f"get rayservices in namespace {self.namespace}"):
            try:
                return self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "rayservices", name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self._require_kuberay()
        raise RayServiceNotFoundError(
            f"RayService {name!r} not found in namespace {self.namespace!r}")

    def find(self) -> dict:
        """The only RayService labelled ``app.kubernetes.io/name=qvq-serving`` here."""
        selector = f"{NAME_LABEL}={NAME_LABEL_VALUE}"
        with api_errors(self.cluster, f"list rayservices in namespace {self.namespace}"):
            try:
                found = self._custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "rayservices", label_selector=selector)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self._require_kuberay()
                raise
        items = found.get("items") or []
        if not items:
            raise RayServiceNotFoundError(
                f"no RayService labelled {selector} in namespace {self.namespace!r}; "
                f"pass -n NAMESPACE or --name NAME")
        if len(items) > 1:
            names = ", ".join(sorted(_get(i, "metadata", "name", default="?") for i in items))
            raise RayServiceNotFoundError(
                f"several RayServices labelled {selector} in namespace {self.namespace!r} "
                f"({names}); pick one with --name")
        return items[0]

    def resolve(self, name: str | None) -> dict:
        return self.get(name) if name else self.find()

    def raycluster(self, name: str) -> dict | None:
        with api_errors(self.cluster, f"get rayclusters in namespace {self.namespace}"):
            try:
                return self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "rayclusters", name)
            except ApiException as exc:
                if exc.status == 404:
                    return None  # being created or deleted right now
                raise

    def pods(self, raycluster_name: str) -> list[dict]:
        with api_errors(self.cluster, f"list pods in namespace {self.namespace}"):
            resp = self._core.list_namespaced_pod(
                self.namespace, label_selector=f"ray.io/cluster={raycluster_name}",
                _preload_content=False)
        return json.loads(resp.data).get("items") or []

    def patch(self, patch: Patch) -> dict:
        what = f"{patch.plural}/{patch.name}"
        with api_errors(self.cluster, f"patch {what} in namespace {self.namespace}"):
            try:
                return self._custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, patch.plural, patch.name, patch.ops,
                    _content_type=JSON_PATCH)
            except ApiException as exc:
                if exc.status in (409, 422):
                    raise ConflictError(
                        f"{what} changed since it was read ({exc.status}); nothing of this "
                        f"patch was applied, run the command again") from None
                if exc.status == 404:
                    raise RayServiceNotFoundError(
                        f"{what} disappeared from namespace {self.namespace!r}") from None
                raise


# --- status ----------------------------------------------------------------------------------

def api_service_name(rs: dict) -> str:
    """The Serve service KubeRay creates: ``spec.serveService`` name, else ``<name>-serve-svc``."""
    return (_get(rs, "spec", "serveService", "metadata", "name")
            or f"{_get(rs, 'metadata', 'name')}-serve-svc")


def _quantity(value: Any) -> int:
    try:
        return int(float(str(value)))
    except ValueError:
        return 0


def pod_gpus(pod: dict) -> int:
    total = 0
    for container in _get(pod, "spec", "containers", default=[]):
        resources = container.get("resources") or {}
        amount = _get(resources, "limits", GPU_RESOURCE)
        if amount is None:
            amount = _get(resources, "requests", GPU_RESOURCE, default=0)
        total += _quantity(amount)
    return total


def _pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in _get(pod, "status", "conditions", default=[]))


def _group_row(min_replicas: int | None, max_replicas: int | None, desired: int | None,
               pods: list[dict]) -> dict:
    running = [p for p in pods if _get(p, "status", "phase") == "Running"]
    return {"minReplicas": min_replicas, "maxReplicas": max_replicas, "desired": desired,
            "running": len(running), "ready": sum(_pod_ready(p) for p in running),
            "gpus": sum(pod_gpus(p) for p in running)}


def group_rows(rs: dict, raycluster: dict | None, pods: list[dict]) -> dict[str, dict]:
    """Desired bounds per group (the RayCluster's, which the autoscaler moves, else the
    RayService's) beside the pods actually running and ready, and their GPUs."""
    spec = _get(raycluster, "spec") or _get(rs, "spec", "rayClusterConfig", default={})

    def labels(p: dict) -> dict:
        return _get(p, "metadata", "labels", default={})

    rows = {"head": _group_row(None, None, 1, [p for p in pods
                                                if labels(p).get("ray.io/node-type") == "head"])}
    for group in spec.get("workerGroupSpecs") or []:
        name = group.get("groupName", "?")
        desired = 0 if group.get("suspend") else group.get("replicas", group.get("minReplicas"))
        rows[name] = _group_row(group.get("minReplicas"), group.get("maxReplicas"), desired,
                                [p for p in pods if labels(p).get("ray.io/group") == name
                                 and labels(p).get("ray.io/node-type") != "head"])
    return rows


def _applications(service_status: dict) -> dict[str, dict]:
    apps = {}
    for app_name, app in (service_status.get("applicationStatuses") or {}).items():
        apps[app_name] = {
            "status": app.get("status"), "message": app.get("message") or "",
            "deployments": {name: {"status": d.get("status"), "message": d.get("message") or ""}
                            for name, d in (app.get("serveDeploymentStatuses") or {}).items()}}
    return apps


def summarize(rs: dict, clusters: dict[str, tuple[dict | None, list[dict]]]) -> dict:
    """The status report: ``clusters`` maps a RayCluster name to (its object or None, its pods)."""
    status = rs.get("status") or {}
    report: dict[str, Any] = {
        "name": _get(rs, "metadata", "name"), "namespace": _get(rs, "metadata", "namespace"),
        "serviceStatus": status.get("serviceStatus"),
        "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                       for c in status.get("conditions") or []],
        "apiService": api_service_name(rs),
        "clusters": {},
    }
    for role in ("active", "pending"):
        service_status = status.get(f"{role}ServiceStatus") or {}
        name = service_status.get("rayClusterName")
        if not name:
            continue
        raycluster, pods = clusters.get(name, (None, []))
        groups = group_rows(rs, raycluster, pods)
        report["clusters"][role] = {
            "rayClusterName": name,
            "state": _get(raycluster, "status", "state"),
            "applications": _applications(service_status),
            "groups": groups,
            "gpusInUse": sum(g["gpus"] for g in groups.values()),
        }
    report["gpusInUse"] = sum(c["gpusInUse"] for c in report["clusters"].values())
    return report


def cluster_names(rs: dict) -> list[str]:
    names = [_get(rs, "status", f"{role}ServiceStatus", "rayClusterName")
             for role in ("active", "pending")]
    return [n for n in names if n]


# --- serve config ----------------------------------------------------------------------------

def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                     for e in exc.errors())


@dataclass
class ServeApp:
    """Our applications in ``spec.serveConfigV2``: the one that runs ``serving.app:app_builder``
    (its ``args`` are the config), and, with ``server.chat_entry: generator``, the one that
    runs ``serving.app:chat_app_builder`` and holds the generator deployment."""

    raw: str                      # serveConfigV2 as stored
    doc: dict                     # serveConfigV2 parsed
    index: int                    # position of the main application in doc["applications"]
    label: str                    # "RayService <name> serveConfigV2 application '<app>'"
    chat_index: int | None = None  # position of the chat application, if there is one

    @property
    def app(self) -> dict:
        return self.doc["applications"][self.index]

    def index_of(self, role: str) -> int:
        """The application whose ``deployments`` list holds ``role``'s entry."""
        return self.chat_index if role == "generator" and self.chat_index is not None \
            else self.index

    @property
    def source(self) -> str:
        return f"{self.label} args"

    @property
    def args(self) -> dict:
        return self.app.get("args") or {}

    def config(self, args: dict | None = None) -> ServingConfig:
        """Validate ``args`` (default: the stored ones) as our config; local QVQ__ env is
        not applied, since it is not the pods' environment."""
        args = self.args if args is None else args
        if "config_path" in args:
            raise KubeError(f"{self.source} reads its config from config_path="
                            f"{args['config_path']!r} inside the image; kubectl qvq only "
                            f"works with an inline config in args")
        return config_from_dict(args, source=self.source, environ={})

    def deployment_entries(self, index: int | None = None) -> list[dict]:
        """The ``deployments`` list of one application (default: all of ours): per-deployment
        options applied on top of the code."""
        if index is None:
            indexes = [self.index] + ([self.chat_index] if self.chat_index is not None else [])
            return [e for i in indexes for e in self.deployment_entries(i)]
        app = self.doc["applications"][index]
        label = f"{self.label.rsplit(' application ', 1)[0]} application " \
                f"{app.get('name', index)!r}"
        entries = app.get("deployments") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e
                                                    for e in entries):
            raise KubeError(f"{label}: deployments must be a list of mappings, each with "
                            f"a name")
        names = [e["name"] for e in entries]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise KubeError(f"{label}: deployments lists {', '.join(map(str, twice))} more "
                            f"than once; keep one entry per deployment")
        return entries

    def overrides(self) -> dict[str, dict]:
        """Role -> the ``autoscaling_config`` override of its deployment, where there is one
        (looked up in the application that runs the role)."""
        out = {}
        for role, name in DEPLOYMENT_OF.items():
            entry = next((e for e in self.deployment_entries(self.index_of(role))
                          if e["name"] == name), None)
            if entry is not None and isinstance(entry.get("autoscaling_config"), dict):
                out[role] = entry["autoscaling_config"]
        return out

    def autoscaling(self, role: str, config: ServingConfig | None = None) -> AutoscalingConfig:
        """The autoscaling Serve runs ``role`` with: its override where there is one, else
        the args'. Serve replaces the whole autoscaling config with an override, so keys it
        lacks take Serve's defaults (ours are the same); ``initial_replicas`` and keys we do
        not model (``metrics_interval_s``, ``policy``, ...) are left out."""
        override = self.overrides().get(role)
        if override is None:
            return getattr((config or self.config()).deployments, role).autoscaling
        known = {k: override[k] for k in AutoscalingConfig.model_fields if k in override}
        try:
            return AutoscalingConfig.model_validate(known)
        except ValidationError as exc:
            raise KubeError(f"{self.label}: deployments entry {DEPLOYMENT_OF[role]!r}: "
                            f"autoscaling_config: {_errors(exc)}") from None

    def effective_config(self) -> ServingConfig:
        """The args' config with each deployment's ``autoscaling_config`` override applied."""
        config = self.config()
        overrides = self.overrides()
        if not overrides:
            return config
        data = config.model_dump()
        for role in overrides:
            data["deployments"][role]["autoscaling"] = self.autoscaling(role).model_dump()
        return ServingConfig.model_validate(data)


def serve_app(rs: dict) -> ServeApp:
    name = _get(rs, "metadata", "name")
    raw = _get(rs, "spec", "serveConfigV2")
    if not raw:
        raise KubeError(f"RayService {name!r} has no spec.serveConfigV2")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise KubeError(f"RayService {name!r}: spec.serveConfigV2 is not valid YAML: "
                        f"{exc}") from None
    apps = doc.get("applications") if isinstance(doc, dict) else None
    if not isinstance(apps, list):
        raise KubeError(f"RayService {name!r}: spec.serveConfigV2 has no applications list")
    chat = next((i for i, app in enumerate(apps) if isinstance(app, dict)
                 and app.get("import_path") == CHAT_APP_IMPORT_PATH), None)
    for index, app in enumerate(apps):
        if isinstance(app, dict) and app.get("import_path") == APP_IMPORT_PATH:
            return ServeApp(raw, doc, index, f"RayService {name} serveConfigV2 application "
                                             f"{app.get('name', index)!r}", chat)
    paths = ", ".join(str(a.get("import_path")) for a in apps if isinstance(a, dict)) or "none"
    raise KubeError(f"RayService {name!r}: no application in spec.serveConfigV2 imports "
                    f"{APP_IMPORT_PATH} (found: {paths})")


# --- scale -----------------------------------------------------------------------------------

@dataclass
class Patch:
    plural: str
    name: str
    ops: list[dict] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for stderr, before it is sent


def worker_groups(rs: dict) -> list[str]:
    return [g.get("groupName") for g in
            _get(rs, "spec", "rayClusterConfig", "workerGroupSpecs", default=[])]


def scale_targets(rs: dict) -> list[str]:
    return [*worker_groups(rs), *DEPLOYMENT_ROLES]


def _check_bounds(target: str, new_min: int, new_max: int | None, *, given: dict,
                  deployment: bool) -> None:
    for flag, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise ScaleError(f"{flag} must be a non-negative integer, got {value!r}")
    if deployment and new_max is not None and new_max < 1:
        raise ScaleError(f"{target}: max_replicas must be at least 1 (got {new_max}); a Serve "
                         f"deployment cannot scale to zero replicas at its upper bound")
    if new_max is not None and new_min > new_max:
        hint = "" if all(v is not None for v in given.values()) else " (pass both --min and --max)"
        raise ScaleError(f"{target}: min {new_min} is greater than max {new_max}{hint}")


def _group_patch(plural: str, name: str, prefix: str, groups: list[dict], group: str,
                 new_min: int, new_max: int | None) -> Patch:
    index = next(i for i, g in enumerate(groups) if g.get("groupName") == group)
    spec = groups[index]
    base = f"{prefix}/{index}"
    patch = Patch(plural, name, [{"op": "test", "path": f"{base}/groupName", "value": group}])
    wanted: dict[str, int | None] = {"minReplicas": new_min, "maxReplicas": new_max}
    if spec.get("replicas") is not None:
        upper = new_max if new_max is not None else spec["replicas"]
        wanted["replicas"] = min(max(spec["replicas"], new_min), max(upper, new_min))
    for key, value in wanted.items():
        old = spec.get(key)
        if value is None or old == value:
            continue
        if key in spec:
            patch.ops += [{"op": "test", "path": f"{base}/{key}", "value": old},
                          {"op": "replace", "path": f"{base}/{key}", "value": value}]
        else:
            patch.ops.append({"op": "add", "path": f"{base}/{key}", "value": value})
        patch.changes.append(f"{group} {key} {'-' if old is None else old} -> {value}")
    return patch


def plan_group_scale(rs: dict, rayclusters: list[dict], group: str, min_replicas: int | None,
                     max_replicas: int | None) -> list[Patch]:
    """Patches for the RayService and each given RayCluster that has this group."""
    groups = _get(rs, "spec", "rayClusterConfig", "workerGroupSpecs", default=[])
    spec = next(g for g in groups if g.get("groupName") == group)
    new_min = min_replicas if min_replicas is not None else spec.get("minReplicas", 0)
    new_max = max_replicas if max_replicas is not None else spec.get("maxReplicas")
    _check_bounds(group, new_min, new_max, deployment=False,
                  given={"--min": min_replicas, "--max": max_replicas})
    name = _get(rs, "metadata", "name")
    patches = [_group_patch("rayservices", name, "/spec/rayClusterConfig/workerGroupSpecs",
                            groups, group, new_min, new_max)]
    for rc in rayclusters:
        rc_groups = _get(rc, "spec", "workerGroupSpecs", default=[])
        if any(g.get("groupName") == group for g in rc_groups):
            patches.append(_group_patch("rayclusters", _get(rc, "metadata", "name"),
                                        "/spec/workerGroupSpecs", rc_groups, group,
                                        new_min, new_max))
    return [p for p in patches if p.changes]


def _code_version(app: dict) -> str | None:
    """Serve's code version of an app config, or None where Serve's function is not there
    (it is private; the controller compares it to decide between an in-place update and a
    rebuild that restarts every replica)."""
    from ray.serve.schema import ServeApplicationSchema

    try:
        from ray.serve._private.deploy_utils import get_app_code_version
    except ImportError:
        return None
    try:
        return get_app_code_version(ServeApplicationSchema.model_validate(app))
    except ValidationError:
        return None


def _check_serve_config(doc: dict, index: int, name: str) -> None:
    """The whole new serveConfigV2 as Serve will read it, and the override as Serve's
    ``AutoscalingConfig`` (the schema keeps ``autoscaling_config`` a plain dict)."""
    from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(doc)
        entry = next(e for e in doc["applications"][index]["deployments"] if e["name"] == name)
        ServeAutoscalingConfig.model_validate(entry["autoscaling_config"])
    except ValidationError as exc:
        raise ScaleError(f"the new serveConfigV2 would not be valid for Ray Serve: "
                         f"{_errors(exc)}") from None


def plan_deployment_scale(rs: dict, role: str, min_replicas: int | None,
                          max_replicas: int | None) -> list[Patch]:
    """A patch of serveConfigV2 that sets the ``autoscaling_config`` override of the role's
    deployment in the app's ``deployments`` list: its effective autoscaling with the new
    bounds, complete. ``args`` and every other key and entry stay as they are."""
    app = serve_app(rs)
    name = DEPLOYMENT_OF[role]
    current = app.autoscaling(role, app.config())  # args must validate even when overridden
    new_min = min_replicas if min_replicas is not None else current.min_replicas
    new_max = max_replicas if max_replicas is not None else current.max_replicas
    _check_bounds(role, new_min, new_max, deployment=True,
                  given={"--min": min_replicas, "--max": max_replicas})
    try:
        wanted = AutoscalingConfig.model_validate(
            {**current.model_dump(), "min_replicas": new_min, "max_replicas": new_max})
    except ValidationError as exc:
        raise ScaleError(f"{role}: {_errors(exc)}") from None
    changes = [f"{role} {key} {getattr(current, key)} -> {getattr(wanted, key)}"
               for key in ("min_replicas", "max_replicas")
               if getattr(current, key) != getattr(wanted, key)]
    if not changes:
        return []
    doc = copy.deepcopy(app.doc)
    index = app.index_of(role)
    target = doc["applications"][index]
    entries = target["deployments"] = target.get("deployments") or []
    entry = next((e for e in entries if e["name"] == name), None)
    if entry is None:
        entries.append(entry := {"name": name})
    entry["autoscaling_config"] = wanted.to_serve()
    _check_serve_config(doc, index, name)
    old_version = _code_version(app.doc["applications"][index])
    new_version = _code_version(target)
    if old_version is not None and old_version == new_version:
        effect = (f"Serve applies the new autoscaling_config of {name} in place, without "
                  f"restarting replicas")
    elif old_version is not None and new_version is not None:
        effect = (f"this is the first autoscaling_config override of {name}, and Ray Serve "
                  f"counts those in the app's code version: this once redeploys every "
                  f"deployment of the app (the generator included) with rolling restarts; "
                  f"later scales of {name} apply in place")
    else:
        effect = ("cannot tell whether Serve restarts replicas for this change: Ray Serve's "
                  "code version of the app could not be computed here")
    new_raw = yaml.safe_dump(doc, sort_keys=False)
    return [Patch("rayservices", _get(rs, "metadata", "name"),
                  [{"op": "test", "path": "/spec/serveConfigV2", "value": app.raw},
                   {"op": "replace", "path": "/spec/serveConfigV2", "value": new_raw}],
                  changes, [effect, HELM_NOTE])]
