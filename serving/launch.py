"""Start our Serve application on Ray and take it down again: the one startup path of
``qvq serve``, batch jobs (``qvq batch run``) and the benchmarks.

With ``ray.address`` unset a local Ray is started here and is ours: its processes inherit this
process's environment (the engine's variables, Serve's ingress choice), get the configured CPUs
and object store, and whatever it leaves behind (Serve's HAProxy outlives its actor and would
keep holding the HTTP port) is reaped on the way out.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from serving.config import ServingConfig
from serving.errors import ServiceUnavailableError

_FROM_CONFIG = object()


@contextlib.contextmanager
def running_app(config: ServingConfig, *, address: str | None | object = _FROM_CONFIG,
                host: str | None = None, port: int | None = None,
                log_to_driver: bool = True) -> Iterator[str]:
    """Ray up, Serve up, the app deployed (not yet healthy); yields its base URL. ``address``
    defaults to ``ray.address``, ``host``/``port`` to the ``server`` section."""
    import ray
    from ray import serve

    from serving.app import applications
    from serving.generate.engine.args import engine_env

    address = config.ray.address if address is _FROM_CONFIG else address
    for key, value in engine_env(config).items():
        os.environ.setdefault(key, value)
    init: dict = {"address": address, "include_dashboard": False,
                  "log_to_driver": log_to_driver}
    local = address is None
    if local:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = \
            "1" if config.server.ingress == "haproxy" else "0"
        init["num_cpus"] = config.ray.num_cpus
        if config.ray.resources:
            init["resources"] = dict(config.ray.resources)
        if config.ray.object_store_memory_mib:
            init["object_store_memory"] = config.ray.object_store_memory_mib * 2**20
    ray.init(**{k: v for k, v in init.items() if v is not None or k == "address"})
    host = host or config.server.host
    port = port or config.server.port
    spawned: list = []
    try:
        serve.start(http_options={"host": host, "port": port,
                                  "request_timeout_s": config.server.request_timeout_s})
        for name, prefix, app in applications(config):
            serve.run(app, name=name, route_prefix=prefix, blocking=False)
        yield f"http://{host}:{port}"
    finally:
        if local:
            spawned = _descendants()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _reap(spawned)


@dataclass(frozen=True)
class Whereabouts:
    """Where a running app's pieces are, for the people who operate it."""

    api: str  # the OpenAI base URL
    health: str
    metrics: str | None  # Ray's Prometheus endpoint on this node (not the API port)
    logs: str | None  # this node's Ray session logs (serve/ holds the replicas' JSON logs)

    def describe(self, model: str, how_to_stop: str) -> str:
        rows = [("API", f"{self.api}  (model {model!r})"), ("Health", self.health),
                ("Metrics", f"{self.metrics}  (Ray's Prometheus endpoint: qvq_*, Serve and "
                            "vLLM metrics; the API port serves no /metrics)"
                 if self.metrics else "unknown (Ray reported no metrics port)"),
                ("Logs", f"{self.logs}  (serve/replica_*.log: JSON lines per replica)"
                 if self.logs else "on each Ray node's session directory"),
                ("Stop", how_to_stop)]
        return "qvq-serving is ready:\n" + "\n".join(f"  {k:<8}{v}" for k, v in rows)


def whereabouts(base_url: str) -> Whereabouts:
    """Endpoints of the app just started, asked of the Ray node this process runs on (so its
    metrics endpoint is reached on 127.0.0.1)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), {})
    port = node.get("MetricsExportPort")
    return Whereabouts(api=f"{base_url}/v1", health=f"{base_url}/health",
                       metrics=f"http://127.0.0.1:{port}/metrics" if port else None,
                       logs=_logs_dir())


def _logs_dir() -> str | None:
    # Ray has no public API for its session directory; the private one is used for display only
    try:
        from ray._private import worker

        return worker._global_node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - a missing path only shortens the banner
        return None


def wait_until_healthy(base_url: str, app_names: Sequence[str], stop: threading.Event, *,
                       report_every_s: float = 30.0,
                       on_wait: Callable[[str], None] = print) -> bool:
    """Block until ``/health`` answers 200 (True), ``stop`` is set (False), or Serve fails to
    deploy one of the apps (ServiceUnavailableError with Serve's own message). A 72B model takes
    minutes to load, so there is no deadline: the caller sees progress every
    ``report_every_s``."""
    import httpx
    from ray import serve

    started = last_report = time.monotonic()
    while not stop.is_set():
        try:
            if httpx.get(f"{base_url}/health", timeout=10).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        statuses = serve.status().applications
        states = {}
        for name in app_names:
            app = statuses.get(name)
            state = str(app.status) if app is not None else "NOT_STARTED"
            # UNHEALTHY can pass (a replica failing its checks is being replaced); a failed
            # deploy is final
            if state.endswith("DEPLOY_FAILED"):
                raise ServiceUnavailableError(
                    f"Serve could not start the app {name!r} ({state}): "
                    f"{app.message if app else ''}".strip(), code="deploy_failed")
            states[name] = state.rsplit(".", 1)[-1]
        if time.monotonic() - last_report >= report_every_s:
            last_report = time.monotonic()
            on_wait(f"still starting ({', '.join(f'{k}: {v}' for k, v in states.items())}, "
                    f"{last_report - started:.0f} s): loading the model and starting the "
                    "engine")
        stop.wait(2.0)
    return False


def _descendants() -> list:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _reap(processes: list, timeout_s: float = 10.0) -> None:
    import psutil

    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=timeout_s)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
