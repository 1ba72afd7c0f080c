"""End-to-end benchmark: our app vs vLLM's own OpenAI server, same model, same requests.

    python -m loadtest.bench_e2e [--concurrency 8] [--text-requests 64] [--photo-requests 16]

Starts each server in turn on 127.0.0.1 (ours: `qvq serve` with local Ray; bare: `vllm serve`),
sends the same closed-loop load (text-only, then distinct photo-like JPEGs of 2048x1536 and
4000x3000), and reports req/s, p50/p99 latency and CPU-ms per request (CPU time of the
server's whole process tree during the scenario, so Ray's own processes count against us).
Writes ``loadtest/results/e2e-<timestamp>.json`` and prints ratios ours/bare.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from dataclasses import asdict, dataclass

import httpx

from loadtest import records
from loadtest.loadgen import percentile
from loadtest.photos import photo_jpeg
from loadtest.records import machine_facts
from loadtest.servers import BARE_VLLM, OURS, ROOT, ManagedServer, server_factories

SYSTEM = "You are a helpful assistant."


@dataclass
class Scenario:
    name: str
    requests: int
    image_size: tuple[int, int] | None
    max_tokens: int = 16


@dataclass
class Result:
    server: str
    scenario: str
    requests: int
    errors: int
    wall_s: float
    req_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_req: float
    idle_cpu_ms_per_s: float
    cpu_ms_per_req_net_of_idle: float
    frontend_cpu_ms_per_req: float
    frontend_cpu_ms_per_req_net_of_idle: float
    completion_tokens: int


def bodies(scenario: Scenario, model: str, cache, round_: int = 0) -> list[dict]:
    """The same payloads for every server; each round uses fresh images, so neither side can
    answer from an image cache filled by an earlier round."""
    out = []
    for i in range(scenario.requests):
        content: list[dict] = [{"type": "text", "text": "Describe what you see, step by step."}]
        if scenario.image_size:
            w, h = scenario.image_size
            seed = 1000 + round_ * scenario.requests + i
            jpeg = photo_jpeg(w, h, seed=seed, cache_dir=cache)
            url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        out.append({"model": model, "max_tokens": scenario.max_tokens, "temperature": 0.0,
                    "messages": [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": content}]})
    return out


async def run_load(base: str, payloads: list[dict], concurrency: int):
    """Closed loop: ``concurrency`` workers, each sending the next payload when one returns.

    Bodies are JSON-encoded before the clock starts: the load generator shares this machine's
    cores with the server, so its own encoding work must stay out of the measured window.
    """
    encoded = [json.dumps(p).encode() for p in payloads]
    latencies: list[float] = []
    errors = 0
    tokens = 0
    queue: asyncio.Queue = asyncio.Queue()
    for body in encoded:
        queue.put_nowait(body)

    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        async def worker():
            nonlocal errors, tokens
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/chat/completions", content=body,
                                             headers={"Content-Type": "application/json"})
                    ok = resp.status_code == 200
                    if ok:
                        tokens += resp.json()["usage"]["completion_tokens"]
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += 0 if ok else 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall, tokens


def measure(server: ManagedServer, scenarios: list[Scenario], concurrency: int, cache,
            rounds: int, idle_window_s: float = 5.0) -> list[Result]:
    results = []
    # Warm-up: first requests pay one-off costs (compilation of shapes, caches) on both sides.
    warm = Scenario("warmup", max(concurrency, 4), (640, 480))
    asyncio.run(run_load(server.base, bodies(warm, server.model_id, cache), concurrency))
    asyncio.run(run_load(server.base, bodies(Scenario("warmup-text", 4, None), server.model_id,
                                             cache), concurrency))
    (t0, e0) = server.cpu_seconds()
    time.sleep(idle_window_s)
    (t1, e1) = server.cpu_seconds()
    idle_per_s = (t1 - t0) / idle_window_s
    idle_front_per_s = ((t1 - e1) - (t0 - e0)) / idle_window_s
    for sc in scenarios:
        lat: list[float] = []
        errors = tokens = 0
        wall = cpu = front = 0.0
        for round_ in range(rounds):
            payloads = bodies(sc, server.model_id, cache, round_)
            (t0, e0) = server.cpu_seconds()
            r_lat, r_errors, r_wall, r_tokens = asyncio.run(
                run_load(server.base, payloads, concurrency))
            (t1, e1) = server.cpu_seconds()
            cpu += t1 - t0
            front += (t1 - e1) - (t0 - e0)
            lat += r_lat
            errors += r_errors
            wall += r_wall
            tokens += r_tokens
        n = sc.requests * rounds
        res = Result(server=server.name, scenario=sc.name, requests=n, errors=errors,
                     wall_s=round(wall, 3), req_per_s=round(n / wall, 3),
                     p50_ms=round(percentile(lat, 0.5) * 1000, 1),
                     p99_ms=round(percentile(lat, 0.99) * 1000, 1),
                     cpu_ms_per_req=round(cpu / n * 1000, 2),
                     idle_cpu_ms_per_s=round(idle_per_s * 1000, 1),
                     cpu_ms_per_req_net_of_idle=round((cpu - idle_per_s * wall) / n * 1000, 2),
                     frontend_cpu_ms_per_req=round(front / n * 1000, 2),
                     frontend_cpu_ms_per_req_net_of_idle=round(
                         (front - idle_front_per_s * wall) / n * 1000, 2),
                     completion_tokens=tokens)
        print(f"  {server.name:10s} {sc.name:16s} {res.req_per_s:7.2f} req/s  "
              f"p50 {res.p50_ms:8.1f} ms  p99 {res.p99_ms:8.1f} ms  "
              f"cpu {res.cpu_ms_per_req:7.1f} ms/req, outside engine "
              f"{res.frontend_cpu_ms_per_req:6.1f} (net of idle "
              f"{res.frontend_cpu_ms_per_req_net_of_idle:.1f})  errors {errors}", flush=True)
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "local-cpu.yaml"))
    parser.add_argument("--model-dir", default=str(ROOT / ".qvq" / "models" / "tiny-qwen2vl"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--text-requests", type=int, default=64)
    parser.add_argument("--photo-requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds per scenario, each with fresh images")
    parser.add_argument("--only", choices=[OURS, BARE_VLLM], default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import pathlib

    from serving.models.tiny import build_tiny_qwen2vl

    model_dir = build_tiny_qwen2vl(args.model_dir)
    config = pathlib.Path(args.config)
    stamp = records.stamp()
    work = ROOT / ".qvq" / "bench" / stamp
    cache = ROOT / ".qvq" / "bench" / "photos"
    scenarios = [Scenario("text", args.text_requests, None, args.max_tokens),
                 Scenario("photo-2048x1536", args.photo_requests, (2048, 1536), args.max_tokens),
                 Scenario("photo-4000x3000", args.photo_requests, (4000, 3000), args.max_tokens)]
    print("preparing photos ...", flush=True)
    for sc in scenarios:
        for round_ in range(args.rounds):
            bodies(sc, "m", cache, round_)
    servers = server_factories([OURS, BARE_VLLM], model_dir, work, config)
    results: list[Result] = []
    startup: dict[str, float] = {}
    for key, make in servers.items():
        if args.only and key != args.only:
            continue
        server = make()
        print(f"starting {server.name} ...", flush=True)
        try:
            startup[server.name] = round(server.start("/v1/models"), 1)
            results += measure(server, scenarios, args.concurrency, cache, args.rounds)
        finally:
            server.stop()
    ratios = {}
    for sc in scenarios:
        a = next((r for r in results if r.server == OURS and r.scenario == sc.name), None)
        b = next((r for r in results if r.server == BARE_VLLM and r.scenario == sc.name), None)
        if a and b:
            ratios[sc.name] = {
                "req_per_s_ours_over_bare": round(a.req_per_s / b.req_per_s, 3),
                "p50_ours_over_bare": round(a.p50_ms / b.p50_ms, 3),
                "extra_cpu_ms_per_req": round(a.cpu_ms_per_req - b.cpu_ms_per_req, 2),
                "extra_cpu_ms_per_req_net_of_idle": round(
                    a.cpu_ms_per_req_net_of_idle - b.cpu_ms_per_req_net_of_idle, 2),
                "extra_cpu_ms_per_req_outside_engine": round(
                    a.frontend_cpu_ms_per_req - b.frontend_cpu_ms_per_req, 2),
                "extra_cpu_ms_per_req_outside_engine_net_of_idle": round(
                    a.frontend_cpu_ms_per_req_net_of_idle
                    - b.frontend_cpu_ms_per_req_net_of_idle, 2)}
    report = {"benchmark": "e2e", "timestamp": stamp, "machine": machine_facts(),
              "settings": {"concurrency": args.concurrency, "max_tokens": args.max_tokens,
                           "rounds": args.rounds,
                           "config": str(config), "model": "tiny random-weight Qwen2-VL"},
              "startup_s": startup, "results": [asdict(r) for r in results], "ratios": ratios}
    out = records.write(records.result_path("e2e", stamp, args.out), report)
    print(json.dumps(ratios, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
