"""Batch benchmark: a batch job vs the same requests sent live, and what a job does to live
latency.

    python -m loadtest.bench_batch [--lines 500] [--live-concurrency 4 8 16]

Starts our app (`qvq serve`, local store in a fresh directory), then on the tiny model with
16-token greedy answers and a distinct 320x240 photo per request (fresh images in every run,
so no run profits from another's image cache):
  1. live: the requests sent at each concurrency in --live-concurrency; the best rate counts;
  2. batch: the same number of requests as one batch job (lines/s from creation to completion);
  3. live p50/p99 of a light live probe (concurrency 2) with no job, then while a job runs.
Writes loadtest/results/batch-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import threading
import time

import httpx

from loadtest import records
from loadtest.bench_e2e import run_load
from loadtest.loadgen import percentile
from loadtest.photos import photo
from loadtest.records import machine_facts
from loadtest.servers import ROOT, ours
from serving.batch.record import TERMINAL


def bodies(model: str, n: int, seed0: int) -> list[dict]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        photo(320, 240, seed=seed0 + i).save(buf, "JPEG", quality=85)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        out.append({"model": model, "max_tokens": 16, "temperature": 0.0, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "Describe it."}]}]})
    return out


def run_batch(client: httpx.Client, payloads: list[dict]) -> tuple[dict, float]:
    lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST",
                                "url": "/v1/chat/completions", "body": b}) + "\n"
                    for i, b in enumerate(payloads)).encode()
    resp = client.post("/v1/files", files={"file": ("in.jsonl", lines)},
                       data={"purpose": "batch"})
    if resp.status_code != 200:
        raise RuntimeError(f"file upload failed: {resp.status_code} {resp.text[:300]}")
    f = resp.json()
    t0 = time.perf_counter()
    batch = client.post("/v1/batches", json={"input_file_id": f["id"], "completion_window":
                                             "24h", "endpoint": "/v1/chat/completions"}).json()
    while batch["status"] not in TERMINAL:
        time.sleep(0.25)
        batch = client.get(f"/v1/batches/{batch['id']}").json()
    return batch, time.perf_counter() - t0


def live_probe(base: str, payloads: list[dict]) -> list[float]:
    latencies, _, _, _ = asyncio.run(run_load(base, payloads, 2))
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--live-concurrency", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--probe", type=int, default=80, help="live requests per probe")
    args = parser.parse_args(argv)

    from serving.models.tiny import build_tiny_qwen2vl

    stamp = records.stamp()
    work = ROOT / ".qvq" / "bench" / stamp
    server = ours(build_tiny_qwen2vl(ROOT / ".qvq" / "models" / "tiny-qwen2vl"), work,
                  ROOT / "configs" / "local-cpu.yaml",
                  overrides={"storage": {"local": {"root": str(work / "store")}}})
    server.start("/v1/models")
    report: dict = {"benchmark": "batch", "timestamp": stamp, "machine": machine_facts(),
                    "settings": {"lines": args.lines, "max_tokens": 16, "image": "320x240"}}
    seed = 10_000
    try:
        with httpx.Client(base_url=server.base, timeout=600) as client:
            asyncio.run(run_load(server.base, bodies(server.model_id, 16, 1), 8))  # warm-up
            live = {}
            for c in args.live_concurrency:
                payloads = bodies(server.model_id, args.lines, seed)
                seed += args.lines
                _, errors, wall, _ = asyncio.run(run_load(server.base, payloads, c))
                live[c] = {"req_per_s": round(len(payloads) / wall, 2), "errors": errors}
                print(f"live c={c:3d}: {live[c]['req_per_s']:6.2f} req/s  errors {errors}",
                      flush=True)
            best = max(live, key=lambda c: live[c]["req_per_s"])
            batch, wall = run_batch(client, bodies(server.model_id, args.lines, seed))
            seed += args.lines
            batch_rate = args.lines / wall
            print(f"batch: {batch_rate:6.2f} lines/s ({batch['request_counts']}), "
                  f"{batch_rate / live[best]['req_per_s']:.2f}x live at c={best}", flush=True)

            idle = live_probe(server.base, bodies(server.model_id, args.probe, seed))
            seed += args.probe
            job_payloads = bodies(server.model_id, args.lines, seed)
            seed += args.lines
            job: dict = {}
            thread = threading.Thread(target=lambda: job.update(
                result=run_batch(client, job_payloads)))
            thread.start()
            time.sleep(3)  # the job is validated and running
            busy = live_probe(server.base, bodies(server.model_id, args.probe, seed))
            thread.join()
        p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
        report.update({
            "live": {str(c): v for c, v in live.items()}, "best_live_concurrency": best,
            "batch_lines_per_s": round(batch_rate, 2),
            "batch_over_best_live": round(batch_rate / live[best]["req_per_s"], 3),
            "live_probe_idle": {"p50_ms": round(p50_idle * 1000, 1),
                                "p99_ms": round(percentile(idle, 0.99) * 1000, 1)},
            "live_probe_during_job": {"p50_ms": round(p50_busy * 1000, 1),
                                      "p99_ms": round(percentile(busy, 0.99) * 1000, 1)},
            "live_p50_ratio_during_job": round(p50_busy / p50_idle, 3),
            "job_during_probe": job["result"][0]["request_counts"]})
        print(f"live p50 idle {p50_idle * 1000:.1f} ms, during a job {p50_busy * 1000:.1f} ms "
              f"-> {p50_busy / p50_idle:.2f}x", flush=True)
    finally:
        server.stop()
    out = records.write(records.result_path("batch", stamp), report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
