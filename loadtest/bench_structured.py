"""What structured output costs: the same image question answered three ways on our server.

    python -m loadtest.bench_structured [--requests 16] [--max-reasoning-tokens 256]

- ``free``: no response_format (the baseline: free reasoning and answer);
- ``schema-first``: ``response_format`` json_schema without split mode, so the schema holds
  from the first token (no reasoning at all);
- ``reason-then-schema``: the same schema in split mode: free reasoning until the final-answer
  marker or the thinking budget, then the answer decoded under the schema.

One request at a time (latency, not throughput), the same prompt, image and seed per request
index in every mode. Prints per mode: mean completion / reasoning tokens, latency p50 and mean,
the share of answers that parse as the schema; and each mode's latency over schema-first's.
Writes ``loadtest/results/structured-<stamp>.json``. On the random-weight tiny model the
reasoning is noise, so the numbers say what the machinery costs, not what it buys.
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import statistics
import time

import httpx
import jsonschema

from loadtest import records
from loadtest.photos import photo_jpeg
from loadtest.servers import ROOT, add_model_args, model_dir_of, ours

SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["trend", "peak_year", "confident"],
          "properties": {"trend": {"enum": ["up", "down", "flat"]},
                         "peak_year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                         "confident": {"type": "boolean"}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "reading", "schema": SCHEMA,
                                                 "strict": True}}
MODES = {"free": {},
         "schema-first": {"response_format": FORMAT, "split_reasoning": False},
         "reason-then-schema": {"response_format": FORMAT, "split_reasoning": True}}


def chart_url() -> str:
    return "data:image/jpeg;base64," + base64.b64encode(photo_jpeg(640, 480, seed=11)).decode()


def run_mode(base: str, model: str, fields: dict, args: argparse.Namespace,
             image: str) -> dict:
    latencies, completion, reasoning, parsed = [], [], [], 0
    with httpx.Client(base_url=base, timeout=600) as client:
        for i in range(args.requests):
            body = {"model": model, "max_tokens": args.max_tokens, "seed": i,
                    "temperature": 0.7, "max_reasoning_tokens": args.max_reasoning_tokens,
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "text", "text": "Read this chart: trend and peak year?"}]}],
                    **fields}
            started = time.perf_counter()
            resp = client.post("/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - started)
            resp.raise_for_status()
            done = resp.json()
            usage = done["usage"]
            completion.append(usage["completion_tokens"])
            reasoning.append((usage.get("completion_tokens_details") or {})
                             .get("reasoning_tokens", 0))
            try:
                jsonschema.validate(json.loads(done["choices"][0]["message"]["content"]),
                                    SCHEMA)
                parsed += 1
            except (ValueError, jsonschema.ValidationError):
                pass
    return {"requests": args.requests,
            "completion_tokens_mean": round(statistics.fmean(completion), 1),
            "reasoning_tokens_mean": round(statistics.fmean(reasoning), 1),
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_mean_s": round(statistics.fmean(latencies), 3),
            "schema_valid_share": round(parsed / args.requests, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--max-reasoning-tokens", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    model_dir = model_dir_of(args.model_dir)
    stamp = records.stamp()
    work = ROOT / ".qvq" / "bench" / f"structured-{stamp}"
    server = ours(model_dir, work, pathlib.Path(args.config), {})
    image = chart_url()
    results: dict[str, dict] = {}
    print("starting ours ...", flush=True)
    server.start("/health")
    try:
        for mode, fields in MODES.items():
            results[mode] = run_mode(server.base, server.model_id, fields, args, image)
            print(f"  {mode:20} " + "  ".join(f"{k} {v}" for k, v in results[mode].items()),
                  flush=True)
    finally:
        server.stop()
    first = results["schema-first"]["latency_mean_s"]
    ratios = {mode: round(r["latency_mean_s"] / first, 2) for mode, r in results.items()}
    records.save_run("structured", stamp, args, ratios, results=results,
                     latency_over_schema_first=ratios)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
