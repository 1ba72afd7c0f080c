"""Overload: open-loop load at 10x measured capacity against our app (tiny model, local CPU).

    python -m loadtest.overload [--factor 10] [--duration-s 60]

1. Capacity: closed-loop text requests (``--max-tokens``, concurrency 32) -> C req/s.
2. Baseline: Poisson arrivals at 0.7x C for ``--baseline-s``.
3. Overload: Poisson arrivals at ``--factor`` x C for ``--duration-s``, then 0.7x C again.
Requests are not streamed and latency counts from the actual send: the client shares the two
cores with the server, so its own lag is reported apart (``client_lag_p99_ms``).
While it runs, the resident memory of the server's whole process tree is sampled every second.
What must hold: admitted requests keep a bounded p99 (the deployment queues are bounded), the
rest are refused at once with 503 + Retry-After (not timeouts), and memory stays flat.
Writes ``loadtest/results/overload-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import threading
import time
from dataclasses import dataclass

import httpx
import psutil

from loadtest.loadgen import percentile
from loadtest.servers import ROOT, ours


@dataclass
class Outcome:
    status: int  # 0: no HTTP answer (timeout, connection error)
    latency_s: float  # from the actual send
    lag_s: float  # how late the client sent it (its own overload), for the record
    retry_after: str | None = None


async def _one(client: httpx.AsyncClient, body: bytes, intended: float) -> Outcome:
    sent = time.perf_counter()
    try:
        resp = await client.post("/v1/chat/completions", content=body,
                                 headers={"Content-Type": "application/json"})
        status, retry = resp.status_code, resp.headers.get("Retry-After")
    except httpx.HTTPError:
        status, retry = 0, None
    return Outcome(status, time.perf_counter() - sent, max(0.0, sent - intended), retry)


async def open_loop(base: str, bodies: list[bytes], rate: float, seed: int,
                    timeout_s: float = 300) -> tuple[list[Outcome], float]:
    """Poisson arrivals, non-streamed requests (light on the client, which shares the cores)."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as client:
        t0 = at = time.perf_counter()
        tasks = []
        for body in bodies:
            at += rng.expovariate(rate)
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, body, at)))
        outcomes = await asyncio.gather(*tasks)
        return list(outcomes), time.perf_counter() - t0


async def closed_loop(base: str, bodies: list[bytes], concurrency: int) -> tuple[int, float]:
    queue = list(bodies)
    ok = 0
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        async def worker():
            nonlocal ok
            while queue:
                outcome = await _one(client, queue.pop(), time.perf_counter())
                ok += outcome.status == 200
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok, time.perf_counter() - t0


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []  # (t, MiB)
        self._done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._done.is_set():
            total = 0
            try:
                root = psutil.Process(self.pid)
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                pass
            self.samples.append((round(time.monotonic() - t0, 1), round(total / 2**20, 1)))
            self._done.wait(self.every_s)

    def stop(self) -> list[tuple[float, float]]:
        self._done.set()
        self.join()
        return self.samples


def bodies(n: int, max_tokens: int, model: str) -> list[bytes]:
    # greedy with the loop guard off: the tiny model then always writes max_tokens tokens, so
    # every request costs the same (sampling would end some early at random)
    return [json.dumps({"model": model, "max_tokens": max_tokens, "temperature": 0.0,
                        "loop_guard": "off",
                        "messages": [{"role": "user", "content": f"Describe picture {i}."}]}
                       ).encode() for i in range(n)]


def ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1e3, 1)


def phase(outcomes: list[Outcome], wall_s: float, offered_rate: float) -> dict:
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    other: dict[str, int] = {}
    for o in outcomes:
        if o.status not in (200, 503):
            other[str(o.status)] = other.get(str(o.status), 0) + 1
    return {
        "offered_req_per_s": round(offered_rate, 2), "requests": len(outcomes),
        "sent_per_s": round(len(outcomes) / wall_s, 2), "wall_s": round(wall_s, 1),
        "admitted": len(ok), "admitted_per_s": round(len(ok) / wall_s, 2),
        "admitted_p50_ms": ms([o.latency_s for o in ok], 0.5),
        "admitted_p99_ms": ms([o.latency_s for o in ok], 0.99),
        "refused_503": len(refused),
        "refused_with_retry_after": sum(o.retry_after is not None for o in refused),
        "refused_p99_ms": ms([o.latency_s for o in refused], 0.99),
        "other_statuses": other, "client_lag_p99_ms": ms([o.lag_s for o in outcomes], 0.99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=float, default=10)
    parser.add_argument("--duration-s", type=float, default=20)
    parser.add_argument("--baseline-s", type=float, default=20)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local-cpu.yaml"))
    parser.add_argument("--pin", action="store_true",
                        help="server (and vLLM's OpenMP threads) on core 0, this client on "
                             "core 1, so the client can offer the load (needs 2+ cores)")
    args = parser.parse_args(argv)
    work = ROOT / ".qvq" / "bench" / "overload"
    server = ours(ROOT / ".qvq" / "models" / "tiny-qwen2vl", work, pathlib.Path(args.config))
    if args.pin:
        server.argv = ["taskset", "-c", "0", *server.argv]
        server.env["VLLM_CPU_OMP_THREADS_BIND"] = "0"
        os.sched_setaffinity(0, {1})
    model = server.model_id
    print("starting our app ...", flush=True)
    server.start("/health")
    report: dict = {"benchmark": "overload", "factor": args.factor,
                    "max_tokens": args.max_tokens, "pinned": args.pin}
    try:
        asyncio.run(closed_loop(server.base, bodies(16, args.max_tokens, model), 8))  # warm
        ok, wall = asyncio.run(closed_loop(server.base, bodies(64, args.max_tokens, model), 32))
        capacity = ok / wall
        report["capacity"] = {"req_per_s": round(capacity, 2), "closed_loop_concurrency": 32}
        print(f"capacity: {capacity:.2f} req/s", flush=True)
        sampler = MemorySampler(server.proc.pid)
        sampler.start()
        phases = {}
        for name, factor, seconds in (("baseline", 0.7, args.baseline_s),
                                      ("overload", args.factor, args.duration_s),
                                      ("after", 0.7, args.baseline_s)):
            rate = capacity * factor
            n = max(1, int(rate * seconds))
            outcomes, wall = asyncio.run(open_loop(server.base,
                                                   bodies(n, args.max_tokens, model), rate,
                                                   seed=len(phases)))
            phases[name] = phase(outcomes, wall, rate)
            print(name, json.dumps(phases[name]), flush=True)
        memory = sampler.stop()
        report["phases"] = phases
        mib = [m for _, m in memory]
        quarter = max(1, len(mib) // 4)
        report["memory_mib"] = {
            "start": mib[0], "max": max(mib), "end": mib[-1],
            "first_quarter_mean": round(sum(mib[:quarter]) / quarter, 1),
            "last_quarter_mean": round(sum(mib[-quarter:]) / quarter, 1),
            "samples": memory}
        print("memory MiB:", json.dumps({k: v for k, v in report["memory_mib"].items()
                                         if k != "samples"}), flush=True)
    finally:
        server.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "loadtest" / "results" / f"overload-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
