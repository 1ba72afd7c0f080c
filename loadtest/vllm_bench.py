"""vLLM's own benchmark client against ours and bare vLLM: ``vllm bench serve --backend
openai-chat --dataset-name random-mm`` (random prompts, one random image each, streamed), the
same arguments for every server, one server at a time.

    python -m loadtest.vllm_bench [--num-prompts 64] [--max-concurrency 8] [--output-len 64]

Fair by construction: bare vLLM gets our engine arguments (serving/generate/engine/args.py),
and our server adds no default system prompt here, so both render the same prompt tokens.
Prints vLLM's own metrics per server and ours ÷ bare; writes
``loadtest/results/vllm-bench-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

from loadtest import records
from loadtest.servers import (
    BARE_VLLM,
    OURS,
    ROOT,
    add_model_args,
    model_dir_of,
    ours,
    server_factories,
)

METRICS = ("request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
           "median_tpot_ms", "median_itl_ms", "p99_itl_ms")


def bench_argv(base: str, model: str, tokenizer: pathlib.Path, out: pathlib.Path,
               args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "loadtest.vllm_server", "bench", "serve",
            "--backend", "openai-chat", "--base-url", base,
            "--endpoint", "/v1/chat/completions", "--model", model,
            "--tokenizer", str(tokenizer), "--dataset-name", "random-mm",
            "--num-prompts", str(args.num_prompts), "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
            "--random-mm-base-items-per-request", "1",
            "--random-mm-num-mm-items-range-ratio", "0",
            "--random-mm-limit-mm-per-prompt", '{"image": 1, "video": 0}',
            "--random-mm-bucket-config", f"{{({args.image_side}, {args.image_side}, 1): 1.0}}",
            "--max-concurrency", str(args.max_concurrency), "--temperature", "0",
            "--ignore-eos", "--seed", "0", "--disable-tqdm", "--save-result",
            "--result-dir", str(out.parent), "--result-filename", out.name]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64,
                        help="tokens per answer (--ignore-eos: every answer runs to it)")
    parser.add_argument("--image-side", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    model_dir = model_dir_of(args.model_dir)
    stamp = records.stamp()
    work = ROOT / ".qvq" / "bench" / f"vllm-bench-{stamp}"
    config = pathlib.Path(args.config)
    factories = {OURS: lambda: ours(model_dir, work, config,
                                    {"model": {"default_system_prompt": None}}),
                 **server_factories([BARE_VLLM], model_dir, work, config)}
    results: dict[str, dict] = {}
    for name, make in factories.items():
        server = make()
        print(f"starting {name} ...", flush=True)
        try:
            # /health: ours answers 200 once the generator answers too (the router alone
            # serves /v1/models earlier), vLLM's once its engine is up
            server.start("/health")
            out = work / f"{name}.json"
            done = subprocess.run(bench_argv(server.base, server.model_id, model_dir, out, args),
                                  cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                raise RuntimeError(f"vllm bench serve failed against {name}: "
                                   f"{done.stderr[-2000:]}")
            raw = json.loads(out.read_text())
        finally:
            server.stop()
        results[name] = {"completed": raw["completed"], "failed": raw["failed"],
                         **{m: round(raw[m], 3) for m in METRICS if m in raw}}
        print(f"  {name:10} " + "  ".join(f"{k} {v}" for k, v in results[name].items()),
              flush=True)
    ratios = {m: round(results[OURS][m] / results[BARE_VLLM][m], 3)
              for m in METRICS if results[BARE_VLLM].get(m)}
    records.save_run("vllm-bench", stamp, args, ratios, results=results,
                     ours_over_bare=ratios)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
