"""Ray Serve LLM's OpenAI app (`ray.serve.llm.build_openai_app`) as a third baseline.

``ray[llm]`` pins a different vLLM than ours (0.29 vs 0.32), so its extras cannot go into the
project's environment; the few pure-Python/wheel modules its import needs are installed into
``.qvq/bench/rayllm-extras`` (``--target``, no dependencies) and put on PYTHONPATH for this
server only. The engine is the same vLLM the other servers run.

    python -m loadtest.rayllm_server --prepare            # install the extras (PyPI)
    python -m loadtest.rayllm_server --model-dir D --port P --config C   # serve
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

from loadtest.servers import (
    RAY_SERVE_LLM,
    ROOT,
    ManagedServer,
    baseline_env,
    engine_config,
    free_port,
)
from serving.generate.engine.args import engine_kwargs

EXTRAS_DIR = ROOT / ".qvq" / "bench" / "rayllm-extras"
EXTRAS = ["pyarrow", "smart_open", "mmh3"]


def prepare() -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(EXTRAS_DIR), *EXTRAS], check=True)


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(EXTRAS_DIR), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}


def available() -> str | None:
    """None when Ray Serve LLM imports here, else the reason it does not."""
    proc = subprocess.run([sys.executable, "-c", "from ray.serve.llm import build_openai_app"],
                          env={**os.environ, **_env()}, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["import failed"])[-1] + \
        " (run `python -m loadtest.rayllm_server --prepare`)"


def managed(model_dir: pathlib.Path, work: pathlib.Path, config: pathlib.Path) -> ManagedServer:
    reason = available()
    if reason:
        raise RuntimeError(f"Ray Serve LLM unavailable: {reason}")
    port = free_port()
    argv = [sys.executable, "-m", "loadtest.rayllm_server", "--model-dir", str(model_dir),
            "--port", str(port), "--config", str(config)]
    served_name = engine_config(config, model_dir).model.served_name
    return ManagedServer(RAY_SERVE_LLM, argv, port, served_name, work / "ray-serve-llm.log",
                         env=_env())


def serve_forever(model_dir: str, port: int, config_path: str) -> None:
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    config = engine_config(pathlib.Path(config_path), pathlib.Path(model_dir))
    kwargs = {name: value for name, value in engine_kwargs(config).items()
              if value is not None and name not in ("model", "served_model_name")}
    ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False,
             runtime_env={"env_vars": {**baseline_env(config), **_env()}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    llm = LLMConfig(
        model_loading_config={"model_id": config.model.served_name, "model_source": model_dir},
        engine_kwargs=kwargs,
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        # vLLM's CPU build: the engine's placement group asks for CPUs, not a GPU.
        **({"placement_group_config": {"bundles": [{"CPU": 1}]}}
           if config.deployments.generator.num_gpus_per_worker == 0 else {}),
    )
    serve.run(build_openai_app({"llm_configs": [llm]}), blocking=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--model-dir")
    parser.add_argument("--port", type=int)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local-cpu.yaml"))
    args = parser.parse_args(argv)
    if args.prepare:
        prepare()
        print(json.dumps({"extras": str(EXTRAS_DIR), "available": available() is None}))
        return 0
    serve_forever(args.model_dir, args.port, args.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
