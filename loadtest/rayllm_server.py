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

import yaml

from loadtest.servers import ROOT, ManagedServer, free_port

EXTRAS_DIR = ROOT / ".qvq" / "bench" / "rayllm-extras"
EXTRAS = ["pyarrow", "smart_open", "mmh3"]
MODEL_ID = "qvq-72b-preview"


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
    return ManagedServer("ray-serve-llm", argv, port, MODEL_ID, work / "ray-serve-llm.log",
                         env=_env())


def serve_forever(model_dir: str, port: int, config_path: str) -> None:
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    config = yaml.safe_load(pathlib.Path(config_path).read_text())
    m, img = config["model"], config.get("image", {})
    cpu = (config.get("deployments", {}).get("generator", {}).get("num_gpus_per_worker", 1) == 0)
    data = ROOT / ".qvq" / "cache"
    engine_env = {"VLLM_CPU_KVCACHE_SPACE": str(m.get("cpu_kv_cache_gib", 1)),
                  "VLLM_CACHE_ROOT": str(data / "vllm"), "HF_HOME": str(data / "hf"),
                  "TORCHINDUCTOR_CACHE_DIR": str(data / "inductor"), "VLLM_NO_USAGE_STATS": "1",
                  "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=config.get("ray", {}).get("num_cpus"), include_dashboard=False,
             runtime_env={"env_vars": {**engine_env, **_env()}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    llm = LLMConfig(
        model_loading_config={"model_id": MODEL_ID, "model_source": model_dir},
        engine_kwargs={
            "dtype": m.get("dtype", "bfloat16"), "max_model_len": m["max_model_len"],
            "max_num_seqs": m.get("max_num_seqs", 64), "seed": 0,
            "enforce_eager": bool(m.get("enforce_eager")),
            "limit_mm_per_prompt": {"image": img.get("max_images_per_request", 8), "video": 0},
            "mm_processor_kwargs": {"min_pixels": img["min_pixels"],
                                    "max_pixels": img["max_pixels"]},
        },
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        # vLLM's CPU build: the engine's placement group asks for CPUs, not a GPU.
        **({"placement_group_config": {"bundles": [{"CPU": 1}]}} if cpu else {}),
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
