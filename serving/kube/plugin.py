"""``kubectl qvq``: operate a qvq-serving RayService (status, scale, batch jobs, config).

A thin command line: parse, connect with the kubeconfig, call :mod:`serving.kube.rayservice`,
print. Installed as the ``kubectl-qvq`` console script, so kubectl finds it on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any, NoReturn

import httpx
import yaml

from serving.errors import QVQError
from serving.kube.cluster import KubeError, ScaleError, ServiceProxyTransport, connect
from serving.kube.rayservice import (
    API_PORT,
    DEPLOYMENT_ROLES,
    RayServices,
    api_service_name,
    cluster_names,
    plan_deployment_scale,
    plan_group_scale,
    scale_targets,
    serve_app,
    summarize,
    worker_groups,
)
from serving.roles import SECTION_OF

PROG = "kubectl qvq"
API_KEY_ENVS = ("QVQ_API_KEY", "OPENAI_API_KEY")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 with kubectl's wording instead of argparse's exit 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _connect(args: argparse.Namespace) -> tuple[RayServices, dict]:
    cluster = connect(args.kubeconfig, args.context, args.namespace)
    services = RayServices(cluster)
    return services, services.resolve(args.name)


# --- status ----------------------------------------------------------------------------------

def _short(text: str | None, width: int = 70) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[:width - 3] + "..."


def _table(rows: list[list[Any]], indent: str = "  ") -> list[str]:
    cells = [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]


def render_status(report: dict) -> str:
    lines = [f"RayService {report['namespace']}/{report['name']}: "
             f"{report['serviceStatus'] or 'no status yet'}",
             f"API service: {report['apiService']}:{API_PORT}"]
    if report["conditions"]:
        lines += ["", "Conditions:"]
        lines += _table([["TYPE", "STATUS", "REASON", "MESSAGE"]]
                        + [[c["type"], c["status"], c["reason"], _short(c["message"])]
                           for c in report["conditions"]])
    for role, cluster in report["clusters"].items():
        state = f" ({cluster['state']})" if cluster["state"] else ""
        lines += ["", f"{role.capitalize()} cluster {cluster['rayClusterName']}{state}:"]
        rows: list[list[Any]] = [["APPLICATION / DEPLOYMENT", "STATUS", "MESSAGE"]]
        for app_name, app in cluster["applications"].items():
            rows.append([app_name, app["status"], _short(app["message"])])
            rows += [[f"  {name}", d["status"], _short(d["message"])]
                     for name, d in app["deployments"].items()]
        if len(rows) > 1:
            lines += _table(rows)
            lines.append("")
        lines += _table([["GROUP", "MIN", "MAX", "DESIRED", "RUNNING", "READY", "GPUS"]]
                        + [[name, g["minReplicas"], g["maxReplicas"], g["desired"],
                            g["running"], g["ready"], g["gpus"]]
                           for name, g in cluster["groups"].items()])
    if not report["clusters"]:
        lines += ["", "No RayCluster yet: KubeRay has not created one (see the conditions)."]
    lines += ["", f"GPUs in use: {report['gpusInUse']}"]
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    services, rs = _connect(args)
    clusters = {name: (services.raycluster(name), services.pods(name))
                for name in cluster_names(rs)}
    report = summarize(rs, clusters)
    print(json.dumps(report, indent=2) if args.output == "json" else render_status(report))
    return 0


# --- scale -----------------------------------------------------------------------------------

def _scale(args: argparse.Namespace) -> int:
    if args.min is None and args.max is None:
        raise ScaleError("give --min, --max or both")
    services, rs = _connect(args)
    if args.target in worker_groups(rs):
        rayclusters = [rc for name in cluster_names(rs)
                       if (rc := services.raycluster(name)) is not None]
        patches = plan_group_scale(rs, rayclusters, args.target, args.min, args.max)
    elif args.target in DEPLOYMENT_ROLES:
        patches = plan_deployment_scale(rs, args.target, args.min, args.max)
    else:
        raise ScaleError(f"unknown scale target {args.target!r}; valid targets: "
                         f"{', '.join(scale_targets(rs))} (worker groups of the RayService, "
                         f"then Serve deployments)")
    if not patches:
        print(f"{args.target}: nothing to change")
        return 0
    for note in (note for patch in patches for note in patch.notes):
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.dry_run:
        print(json.dumps([{"resource": f"{p.plural}/{p.name}", "namespace": services.namespace,
                           "patch": p.ops} for p in patches], indent=2))
        return 0
    done: list[str] = []
    for patch in patches:
        try:
            services.patch(patch)
        except KubeError as exc:
            if done:
                exc.message = f"{', '.join(done)} patched, but {exc.message}"
            raise
        done.append(f"{patch.plural}/{patch.name}")
        print(f"{patch.plural}/{patch.name} patched: {'; '.join(patch.changes)}")
    return 0


# --- config ----------------------------------------------------------------------------------

def _config(args: argparse.Namespace) -> int:
    _, rs = _connect(args)
    app = serve_app(rs)
    data = app.effective_config().model_dump(mode="json")
    for entry in app.deployment_entries():
        name = entry["name"]
        applied = name in SECTION_OF and isinstance(entry.get("autoscaling_config"), dict)
        others = [k for k in entry if k != "name" and not (applied and k == "autoscaling_config")]
        said = ([f"its autoscaling_config is applied to deployments.{SECTION_OF[name]}.autoscaling"]
                if applied else [])
        said += [f"{', '.join(others)} not shown"] if others else []
        print(f"{PROG}: note: serveConfigV2 overrides deployment {name} outside args: "
              f"{'; '.join(said) or 'no options'}", file=sys.stderr)
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


# --- batch -----------------------------------------------------------------------------------

def _batch_client(args: argparse.Namespace):
    """The HTTP batch client, straight to --api-url or through the API server's service proxy
    (which drops any Authorization header we add, so no API key can pass it)."""
    from serving.batch.client import BatchClient

    if args.api_url:
        url = args.api_url.rstrip("/")
        api_key = args.api_key or next((os.environ[e] for e in API_KEY_ENVS
                                        if os.environ.get(e)), None)
        return BatchClient(url if url.endswith("/v1") else f"{url}/v1", api_key), None
    if args.api_key:
        raise KubeError("--api-key needs --api-url: the Kubernetes API server strips the "
                        "Authorization header from service-proxy requests; run "
                        "'kubectl port-forward svc/<api service> 8000' and pass "
                        "--api-url http://127.0.0.1:8000")
    services, rs = _connect(args)
    service = api_service_name(rs)
    base = (f"{services.cluster.host}/api/v1/namespaces/{services.namespace}/services/"
            f"{service}:{API_PORT}/proxy/v1")
    transport = ServiceProxyTransport(services.cluster)
    return BatchClient(base, None, transport=transport), f"{services.namespace}/{service}"


def _api_error(exc: Exception, proxied: str | None) -> KubeError:
    message = str(exc)
    if proxied and message.startswith("HTTP 401"):
        message += (f" (the API behind service {proxied} wants a key, and the service proxy "
                    f"cannot carry one: port-forward the service and use --api-url/--api-key)")
    elif proxied:
        message += f" (through the API server's proxy to service {proxied})"
    return KubeError(message)


def _batch_submit(args: argparse.Namespace) -> int:
    path = pathlib.Path(args.file)
    if not path.is_file():
        raise KubeError(f"batch input {path} does not exist")
    client, proxied = _batch_client(args)
    try:
        batch = client.submit(path)
        print(batch["id"])
        if not args.wait:
            return 0
        batch = client.wait(batch["id"], out=sys.stderr)
    except (RuntimeError, httpx.HTTPError) as exc:
        raise _api_error(exc, proxied) from None
    print(json.dumps({k: batch.get(k) for k in ("id", "status", "request_counts",
                                                "output_file_id", "error_file_id")}))
    return 0 if batch["status"] == "completed" else 1


def _batch_status(args: argparse.Namespace) -> int:
    client, proxied = _batch_client(args)
    try:
        batch = client.status(args.batch_id)
    except (RuntimeError, httpx.HTTPError) as exc:
        raise _api_error(exc, proxied) from None
    print(json.dumps(batch, indent=2))
    return 0


# --- parser ----------------------------------------------------------------------------------

def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    group = common.add_argument_group("cluster options")
    group.add_argument("-n", "--namespace",
                       help="namespace (default: the kubeconfig context's, else 'default')")
    group.add_argument("--name", help="RayService name (default: the only one labelled "
                                      "app.kubernetes.io/name=qvq-serving)")
    group.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, "
                                            "~/.kube/config)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    output = _Parser(add_help=False)
    output.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="output format")

    parser = _Parser(prog=PROG, description="Operate a qvq-serving RayService.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("status", parents=[common, output],
                       help="service conditions, Serve apps and deployments, replicas, GPUs")
    p.set_defaults(func=_status)

    p = sub.add_parser("scale", parents=[common],
                       help="set replica bounds of a worker group or a Serve deployment")
    p.add_argument("target", help="worker group (cpu-workers, gpu-workers, ...) or deployment "
                                  f"({', '.join(DEPLOYMENT_ROLES)})")
    p.add_argument("--min", type=_count, help="lower bound (a group's minReplicas; a "
                                              "deployment's autoscaling min_replicas)")
    p.add_argument("--max", type=_count, help="upper bound (a group's maxReplicas; a "
                                              "deployment's autoscaling max_replicas)")
    p.add_argument("--dry-run", action="store_true", help="print the JSON patches, send nothing")
    p.set_defaults(func=_scale)

    p = sub.add_parser("config", parents=[common],
                       help="the serving config of serveConfigV2, defaults filled in and "
                            "deployment autoscaling overrides applied")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    p.set_defaults(func=_config)

    batch = sub.add_parser("batch", help="batch jobs over the API").add_subparsers(
        dest="batch_cmd", required=True, parser_class=_Parser)
    api = _Parser(add_help=False)
    api.add_argument("--api-url", help="API base URL (default: through the API server's "
                                       "service proxy, no API key)")
    api.add_argument("--api-key", help="API key for --api-url (default: $QVQ_API_KEY, "
                                       "$OPENAI_API_KEY)")
    p = batch.add_parser("submit", parents=[common, api],
                         help="upload a JSONL file of chat requests and start a batch")
    p.add_argument("file")
    p.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    p.set_defaults(func=_batch_submit)
    p = batch.add_parser("status", parents=[common, api], help="show a batch")
    p.add_argument("batch_id")
    p.set_defaults(func=_batch_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except QVQError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
