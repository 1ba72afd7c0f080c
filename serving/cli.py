"""``qvq``: a thin command line over the library (parse, load config, call, report)."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import pathlib
import signal
import sys
import threading

from serving.config import hash_api_key, load_config
from serving.errors import ConfigError, QVQError

DEFAULT_CONFIG = "configs/local-cpu.yaml"
DEFAULT_TINY_DIR = ".qvq/models/tiny-qwen2vl"


def _serve(args: argparse.Namespace) -> int:
    from serving.launch import running_app, wait_until_healthy, whereabouts
    from serving.roles import applications

    config = load_config(args.config)
    if not os.path.exists(config.model.path) and os.path.isabs(config.model.path):
        raise ConfigError(f"model.path {config.model.path} does not exist")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with running_app(config) as base:
        try:
            if wait_until_healthy(base, [name for name, _ in applications(config)], stop,
                                  on_wait=lambda line: print(line, flush=True)):
                where = whereabouts(base)
                print(where.describe(config.model.served_name,
                                     f"Ctrl-C here, or kill -TERM {os.getpid()}"), flush=True)
                stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


def _build_tiny(args: argparse.Namespace) -> int:
    from serving.models.tiny import build_tiny_qwen2vl

    out = build_tiny_qwen2vl(args.out, seed=args.seed)
    print(out)
    return 0


def _build_random(args: argparse.Namespace) -> int:
    from serving.models import shapes, tiny

    if args.no_weights and args.shape == "tiny":
        raise ConfigError("--no-weights is for the real shapes (tiny builds in seconds)")
    out = shapes.build_random(args.out or f".qvq/models/{args.shape}-random", args.shape,
                              seed=args.seed, weights=not args.no_weights)
    marker = out / (tiny.MARKER if args.shape == "tiny" else shapes.MARKER)
    print(f"{out}\n{marker.read_text()}", flush=True)
    return 0


def _download(args: argparse.Namespace) -> int:
    from serving.models.download import S3Location, download_prefix, s3_config_for

    source = S3Location.parse(args.source)
    config = s3_config_for(source, endpoint_url=args.endpoint_url, region=args.region,
                           credentials_file=args.credentials_file, profile=args.profile,
                           path_style=args.path_style, multipart_threshold_mib=args.part_mib,
                           multipart_chunk_mib=args.part_mib)
    print(download_prefix(source, args.dest, config, workers=args.workers).summary(), flush=True)
    return 0


def _validate(args: argparse.Namespace) -> int:
    for path in args.files:
        config = load_config(path)
        model = config.model
        print(f"{path}: ok (model {model.served_name}, tp={model.tensor_parallel_size}, "
              f"max_model_len={model.max_model_len})")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(json.dumps(load_config(args.config).model_dump(mode="json"), indent=2))
    return 0


def _storage_check(args: argparse.Namespace) -> int:
    from serving.storage.factory import open_store

    config = load_config(args.config)
    store = open_store(config.storage)
    store.check()
    print(f"storage ok: {config.storage.backend} "
          f"({config.storage.s3.bucket if config.storage.s3 else config.storage.local.root})")
    return 0


def _batch_client(args: argparse.Namespace):
    from serving.batch.client import BatchClient

    return BatchClient(args.base_url, args.api_key)


def _batch_submit(args: argparse.Namespace) -> int:
    import pathlib

    client = _batch_client(args)
    batch = client.submit(pathlib.Path(args.file))
    print(batch["id"])
    if args.wait:
        batch = client.wait(batch["id"])
        print(json.dumps({k: batch[k] for k in ("id", "status", "request_counts",
                                                "output_file_id", "error_file_id")}))
        return 0 if batch["status"] == "completed" else 1
    return 0


def _batch_status(args: argparse.Namespace) -> int:
    print(json.dumps(_batch_client(args).status(args.batch_id), indent=2))
    return 0


def _batch_cancel(args: argparse.Namespace) -> int:
    print(json.dumps(_batch_client(args).cancel(args.batch_id), indent=2))
    return 0


def _batch_download(args: argparse.Namespace) -> int:
    import pathlib

    for path in _batch_client(args).download(args.batch_id, pathlib.Path(args.output)):
        print(path)
    return 0


def _batch_run(args: argparse.Namespace) -> int:
    from serving.batch.job import run_batch_job

    config = load_config(args.config)
    address = None if args.address == "local" else args.address
    batch = run_batch_job(config, args.input, args.owner, address=address, port=args.port)
    print(json.dumps({k: batch[k] for k in ("id", "status", "request_counts",
                                            "output_file_id", "error_file_id")}))
    return 0 if batch["status"] == "completed" else 1


def _k8s_generate(args: argparse.Namespace) -> int:
    from serving.kube import chart, kustomize

    (chart.CHART_DIR / "values.schema.json").write_text(chart.schema_text())
    print(chart.CHART_DIR / "values.schema.json")
    roles = chart.CHART_DIR / chart.ROLES_FILE
    roles.parent.mkdir(exist_ok=True)
    roles.write_text(chart.roles_text())
    print(roles)
    readme = chart.CHART_DIR / "README.md"
    readme.write_text(chart.readme_with_table(readme.read_text()))
    print(readme)
    for rel in kustomize.write():
        print(kustomize.K8S_DIR / rel)
    return 0


def _k8s_check(args: argparse.Namespace) -> int:
    from serving.kube import chart, kustomize

    stale = kustomize.drift()
    if (chart.CHART_DIR / "values.schema.json").read_text() != chart.schema_text():
        stale.insert(0, "helm/qvq-serving/values.schema.json")
    roles = chart.CHART_DIR / chart.ROLES_FILE
    if not roles.exists() or roles.read_text() != chart.roles_text():
        stale.insert(0, f"helm/qvq-serving/{chart.ROLES_FILE}")
    readme = (chart.CHART_DIR / "README.md").read_text()
    if readme != chart.readme_with_table(readme):
        stale.insert(0, "helm/qvq-serving/README.md (values table)")
    for rel in stale:
        print(f"out of date: {rel}", file=sys.stderr)
    if stale:
        print("run `qvq k8s generate`", file=sys.stderr)
    return 1 if stale else 0


def _dev_cluster(args: argparse.Namespace) -> int:
    from serving.kube import chart, localcluster

    values = chart.load_values(pathlib.Path(args.values))
    rayservice = next(o for o in chart.objects(chart.render(values)) if o["kind"] == "RayService")
    shapes = localcluster.node_shapes(rayservice)
    # as KubeRay: with the in-tree autoscaler the head starts alone and the autoscaler brings
    # up each group's minimum; with GCS fault tolerance the head keeps its tables in Redis
    autoscale = bool(rayservice["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling"))
    head_env, worker_env = localcluster.gcs_fault_tolerance_env(rayservice)
    with localcluster.running(
            shapes[:1] if autoscale else shapes, head_env=head_env, worker_env=worker_env,
            autoscaling=localcluster.autoscaling_config(rayservice) if autoscale else None,
    ) as cluster:
        nodes = cluster.alive_nodes()
        print(f"Ray cluster of {len(nodes)} nodes on 127.0.0.1 (address {cluster.address}, "
              f"dashboard {cluster.dashboard}"
              + (", Ray's autoscaler adds and removes workers" if autoscale else "") + "):")
        for name, node in sorted(nodes.items()):
            total = node.get("resources_total") or {}
            extra = "".join(f", {k} {v:g}" for k, v in total.items()
                            if k not in ("CPU", "GPU", "memory", "object_store_memory")
                            and not k.startswith("node:"))
            print(f"  {name:18} CPU {total.get('CPU', 0):g}, GPU {total.get('GPU', 0):g}{extra}")
        if args.model_path:
            data = pathlib.Path(args.data_dir).resolve()
            config = localcluster.local_serve_config(
                rayservice, model_dir=str(pathlib.Path(args.model_path).resolve()),
                storage={"backend": "local", "local": {"root": str(data / "store")}},
                data_dir=str(data), port=args.port)
            cluster.deploy(config)
            cluster.wait_until_running([app["name"] for app in config["applications"]])
            print(f"API: http://127.0.0.1:{args.port}/v1  placement: "
                  + json.dumps(cluster.replica_nodes()))
        print("Ctrl-C stops every node.", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop nodes on TERM too
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    raw = args.key if args.key is not None else getpass.getpass("API key: ")
    print(json.dumps({"id": args.id, "sha256": hash_api_key(raw)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from serving.models.shapes import SHAPE_NAMES  # light: no torch/transformers at import

    parser = argparse.ArgumentParser(prog="qvq",
                                     description="Serve QVQ-72B-Preview on Ray Serve.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start local Ray (or join ray.address) and the app")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=_serve)

    model = sub.add_parser("model", help="model checkpoints").add_subparsers(dest="model_cmd",
                                                                             required=True)
    p = model.add_parser("build-tiny", help="build a tiny random-weight Qwen2-VL offline")
    p.add_argument("--out", default=DEFAULT_TINY_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_build_tiny)
    p = model.add_parser("build-random",
                         help="build a random-weight Qwen2-VL offline: tiny, or the real "
                              "Qwen2-VL-2B/7B-Instruct shapes (bf16 safetensors shards)")
    p.add_argument("--shape", choices=SHAPE_NAMES, required=True)
    p.add_argument("--out", default=None, help="directory (default .qvq/models/SHAPE-random); "
                                               "a complete build of the same shape is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-weights", action="store_true",
                   help="configs, tokenizer and processor only (seconds; for dry runs)")
    p.set_defaults(func=_build_random)
    p = model.add_parser("download", help="copy a checkpoint from S3 to a local directory "
                                          "(resumable; a pod's init step)")
    p.add_argument("--source", required=True, help="s3://BUCKET/PREFIX of the checkpoint")
    p.add_argument("--dest", required=True, help="local directory (created if missing)")
    p.add_argument("--endpoint-url", default=None,
                   help="S3-compatible endpoint (default: AWS S3, or AWS_ENDPOINT_URL)")
    p.add_argument("--region", default=os.environ.get("AWS_REGION")
                   or os.environ.get("AWS_DEFAULT_REGION"), help="signing region")
    p.add_argument("--credentials-file", default=None,
                   help="AWS shared-credentials file (default: env, profile, pod identity)")
    p.add_argument("--profile", default=None, help="section of --credentials-file")
    p.add_argument("--path-style", action=argparse.BooleanOptionalAction, default=None,
                   help="path-style addressing (default on; off for virtual-hosted AWS)")
    p.add_argument("--workers", type=int, default=8,
                   help="parallel ranged GETs per file (up to 4 files at once)")
    p.add_argument("--part-mib", type=int, default=None,
                   help="part size of ranged GETs, MiB (>= 5; default 16)")
    p.set_defaults(func=_download)

    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="config_cmd",
                                                                       required=True)
    p = cfg.add_parser("validate", help="validate config files against the config model")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_validate)
    p = cfg.add_parser("show", help="print the effective config (file + env overrides)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=_show)

    storage = sub.add_parser("storage", help="object storage").add_subparsers(
        dest="storage_cmd", required=True)
    p = storage.add_parser("check", help="check the store is reachable with these credentials")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=_storage_check)

    batch = sub.add_parser("batch", help="batch jobs over the HTTP API").add_subparsers(
        dest="batch_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=os.environ.get("QVQ_BASE_URL",
                                                             "http://127.0.0.1:8000/v1"))
    common.add_argument("--api-key", default=os.environ.get("QVQ_API_KEY"))
    p = batch.add_parser("submit", parents=[common], help="upload a JSONL file and start it")
    p.add_argument("file")
    p.add_argument("--wait", action="store_true", help="show progress until it ends")
    p.set_defaults(func=_batch_submit)
    for name, func in (("status", _batch_status), ("cancel", _batch_cancel)):
        p = batch.add_parser(name, parents=[common])
        p.add_argument("batch_id")
        p.set_defaults(func=func)
    p = batch.add_parser("download", parents=[common], help="save output and error files")
    p.add_argument("batch_id")
    p.add_argument("-o", "--output", default=".")
    p.set_defaults(func=_batch_download)

    p = batch.add_parser("run", help="deploy the app on this Ray cluster, run one batch file "
                                     "through it and exit (the chart's RayJob entrypoint)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--input", required=True, help="JSONL file: s3://bucket/key or a path")
    p.add_argument("--owner", default="batch", help="key id that owns the job and its files")
    p.add_argument("--address", default="auto",
                   help="Ray cluster to join ('auto': the one this runs in; 'local': start one)")
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP port on this node")
    p.set_defaults(func=_batch_run)

    k8s = sub.add_parser("k8s", help="Helm chart and kustomize manifests").add_subparsers(
        dest="k8s_cmd", required=True)
    p = k8s.add_parser("generate", help="rewrite values.schema.json and k8s/ from the chart "
                                        "and the config model")
    p.set_defaults(func=_k8s_generate)
    p = k8s.add_parser("check", help="exit 1 when values.schema.json or k8s/ is out of date")
    p.set_defaults(func=_k8s_check)

    dev = sub.add_parser("dev", help="development tools").add_subparsers(dest="dev_cmd",
                                                                         required=True)
    p = dev.add_parser("cluster", help="a Ray cluster of several nodes on this machine, one "
                                       "per pod of the chart's RayCluster (with the chart's "
                                       "autoscaler on: the head, and Ray's autoscaler adds "
                                       "the workers); with --model-path the chart's "
                                       "serveConfigV2 deployed on it")
    p.add_argument("--values", default="helm/qvq-serving/ci/tiny-gpu-group-values.yaml",
                   help="chart values file the cluster is rendered from")
    p.add_argument("--model-path", help="deploy the serve config with this model directory")
    p.add_argument("--data-dir", default=".qvq/dev-cluster")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_dev_cluster)

    auth = sub.add_parser("auth", help="API keys").add_subparsers(dest="auth_cmd", required=True)
    p = auth.add_parser("hash-key", help="print the config entry (id, sha256) for a key")
    p.add_argument("--id", required=True)
    p.add_argument("--key", help="the key (prompted for when omitted)")
    p.set_defaults(func=_hash_key)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"qvq: {exc}", file=sys.stderr)
        return 2
    except QVQError as exc:
        print(f"qvq: {exc.message}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # HTTP errors from the batch client
        print(f"qvq: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
