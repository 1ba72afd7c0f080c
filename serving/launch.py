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
from collections.abc import Iterator

from serving.config import ServingConfig

_FROM_CONFIG = object()


@contextlib.contextmanager
def running_app(config: ServingConfig, *, address: str | None | object = _FROM_CONFIG,
                host: str | None = None, port: int | None = None,
                log_to_driver: bool = True) -> Iterator[str]:
    """Ray up, Serve up, the app deployed (not yet healthy); yields its base URL. ``address``
    defaults to ``ray.address``, ``host``/``port`` to the ``server`` section."""
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.engine.vllm_engine import engine_env

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
        if config.ray.object_store_memory_mib:
            init["object_store_memory"] = config.ray.object_store_memory_mib * 2**20
    ray.init(**{k: v for k, v in init.items() if v is not None or k == "address"})
    host = host or config.server.host
    port = port or config.server.port
    spawned: list = []
    try:
        serve.start(http_options={"host": host, "port": port,
                                  "request_timeout_s": config.server.request_timeout_s})
        serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)
        yield f"http://{host}:{port}"
    finally:
        if local:
            spawned = _descendants()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _reap(spawned)


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
