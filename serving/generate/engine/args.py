"""The vLLM engine arguments of a config, built in one place.

Our generator builds ``AsyncEngineArgs`` from :func:`engine_kwargs`; the benchmark baselines
(vLLM's own OpenAI server, Ray Serve LLM) take the same dict, as command-line flags
(:func:`engine_cli_args`) or as ``engine_kwargs``, so a comparison stays fair by construction:
an argument added here reaches every server measured.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from serving.config import ServingConfig


def engine_env(config: ServingConfig) -> dict[str, str]:
    """Environment the engine process needs: caches inside the data dir, CPU KV cache size.

    A relative ``data_dir`` is resolved by each replica against its own working directory, so
    the same config works on a laptop and in a cluster whose nodes have other paths.
    """
    data = config.data_dir
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(config.model.cpu_kv_cache_gib),
        "VLLM_CACHE_ROOT": os.path.join(data, "cache", "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(data, "cache", "inductor"),
        "HF_HOME": os.path.join(data, "cache", "hf"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM's own logging setup (dictConfig) closes every existing handler, Serve's replica
        # log file included; its records go through Serve's logger instead (serving.logs)
        "VLLM_CONFIGURE_LOGGING": "0",
    }


def engine_kwargs(config: ServingConfig) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments; ``None`` values mean vLLM's default."""
    from vllm.config import StructuredOutputsConfig

    model, image = config.model, config.image
    structured = config.requests.structured_output
    return {
        "model": model.path,
        "served_model_name": [model.served_name],
        "dtype": model.dtype,
        "max_model_len": model.max_model_len,
        "max_num_seqs": model.max_num_seqs,
        "max_num_batched_tokens": model.max_num_batched_tokens,
        "tensor_parallel_size": model.tensor_parallel_size,
        "distributed_executor_backend": model.distributed_executor_backend
        if model.tensor_parallel_size > 1 else None,
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "enforce_eager": model.enforce_eager,
        "enable_prefix_caching": model.enable_prefix_caching,
        "seed": model.seed,
        "scheduling_policy": model.scheduling_policy,
        "limit_mm_per_prompt": {"image": max(image.max_images_per_request, 1), "video": 0},
        # images arrive already on the grid; the same bounds make vLLM's own resize a no-op
        "mm_processor_kwargs": {"min_pixels": image.min_pixels,
                                "max_pixels": image.max_pixels},
        "disable_log_stats": False,
        # vLLM's grammar backends read this engine-wide, not per request
        "structured_outputs_config": StructuredOutputsConfig(
            backend=structured.backend, disable_any_whitespace=structured.compact_json),
    }


def engine_cli_args(config: ServingConfig) -> list[str]:
    """The same settings as ``vllm serve`` flags (the model is its positional argument, so it
    is left out): booleans as ``--x``/``--no-x``, dicts as JSON, lists as repeated values."""
    argv: list[str] = []
    for name, value in engine_kwargs(config).items():
        if name == "model" or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if name == "disable_log_stats":  # a plain switch, no --no- form
                argv += [flag] if value else []
            else:
                argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif dataclasses.is_dataclass(value):  # a vLLM config section: its non-default fields
            argv += [flag, json.dumps({f.name: getattr(value, f.name)
                                       for f in dataclasses.fields(value)
                                       if getattr(value, f.name) != f.default})]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
