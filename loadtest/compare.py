"""Comparative benchmark: our app vs bare vLLM (and Ray Serve LLM where it runs), same machine,
same model, same requests, same open-loop load.

    python -m loadtest.compare [--servers ours,bare-vllm] [--rates 2,4,8] [--concurrency 4,16]
                               [--scenarios text,photo-1024,photo-2048x1536,photo-4000x3000]
    python -m loadtest.compare --scenario reasoning-stream   # long streamed answers
    python -m loadtest.compare --scenario short              # 16-token answers, c=8

Each server is started in turn on 127.0.0.1 with the engine settings of one config file. For
every scenario (text only, or one distinct photo-like JPEG per request as a data URL) it runs
open-loop Poisson load at each rate (``--duration-s`` of arrivals) and closed-loop load at each
concurrency, all streamed, and records req/s, output tok/s, TTFT and latency p50/p99, CPU
seconds per request of the server's whole process tree (and outside vLLM's engine processes),
and errors. Writes ``loadtest/results/compare-<stamp>.json`` (with machine facts) and PNG plots
next to it: throughput vs concurrency, latency CDF at the highest rate, TTFT vs rate.

Presets (``--scenario``) fix the workload of a question asked before:

- ``reasoning-stream``: long step-by-step answers, QVQ's main workload. 128 streamed requests
  at concurrency 32 for one 1024x1024 photo plus a short question, then text only; the model
  card's system prompt sent explicitly (so every server renders the same prompt tokens),
  temperature 1, ``max_tokens`` 512. Beside throughput and TTFT it reports the gaps between
  text-carrying chunks (stalls), server CPU per 1k output tokens and CPU by process role.
- ``short``: 16-token answers (greedy), closed loop at concurrency 8, for text, 1024x1024 and
  4000x3000 photos: the per-request cost of the serving layer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import pathlib
import time

from loadtest import loadgen, records
from loadtest.photos import photo_jpeg
from loadtest.records import machine_facts
from loadtest.servers import (
    BARE_VLLM,
    OURS,
    RAY_SERVE_LLM,
    ROOT,
    SERVER_NAMES,
    ManagedServer,
    add_model_args,
    model_dir_of,
    server_factories,
)

SCENARIOS = {"text": None, "photo-1024": (1024, 1024), "photo-2048x1536": (2048, 1536),
             "photo-4000x3000": (4000, 3000)}
PROMPT = "Describe what you see, step by step."
PRESETS: dict[str, dict] = {
    "reasoning-stream": {"scenarios": ["photo-1024", "text"], "rates": [], "concurrency": [32],
                         "per_worker": 4, "max_tokens": 512, "temperature": 1.0,
                         "system_prompt": True},
    "short": {"scenarios": ["text", "photo-1024", "photo-4000x3000"], "rates": [],
              "concurrency": [8], "per_worker": 6, "max_tokens": 16, "temperature": 0.0},
}


def payloads(scenario: str, n: int, seed0: int, model: str, max_tokens: int,
             cache: pathlib.Path, temperature: float = 0.0,
             system_prompt: bool = False) -> list[dict]:
    """``n`` requests; photos are distinct per request (seeded), so no side answers from an
    image cache filled by an earlier point. ``system_prompt``: send the model card's system
    prompt, which our server would otherwise add by itself and bare vLLM would not."""
    from serving.config import QVQ_SYSTEM_PROMPT

    size = SCENARIOS[scenario]
    out = []
    for i in range(n):
        content: list[dict] = [{"type": "text", "text": PROMPT}]
        if size:
            jpeg = photo_jpeg(*size, seed=seed0 + i, cache_dir=cache)
            content.insert(0, {"type": "image_url", "image_url": {
                "url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}})
        messages: list[dict] = [{"role": "user", "content": content}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": QVQ_SYSTEM_PROMPT})
        out.append({"model": model, "max_tokens": max_tokens, "temperature": temperature,
                    "messages": messages})
    return out


def prepare_photos(points: list[dict], cache: pathlib.Path) -> None:
    """Generate every photo the points need, on all cores, before any server starts."""
    import concurrent.futures
    import os

    jobs = [(*SCENARIOS[p["scenario"]], p["seed"] + i) for p in points
            if SCENARIOS[p["scenario"]] for i in range(p["n"])]
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_photo, jobs, [cache] * len(jobs), chunksize=8))


def _photo(job: tuple[int, int, int], cache: pathlib.Path) -> None:
    width, height, seed = job
    photo_jpeg(width, height, seed=seed, cache_dir=cache)


def plan(args) -> list[dict]:
    """The measurement points, in order; each gets its own seeds."""
    points, seed = [], 10_000
    for scenario in args.scenarios:
        for rate in args.rates:
            n = max(4, round(rate * args.duration_s))
            points.append({"scenario": scenario, "mode": "open", "rate": rate, "n": n,
                           "seed": seed})
            seed += n
        for conc in args.concurrency:
            n = conc * args.per_worker
            points.append({"scenario": scenario, "mode": "closed", "concurrency": conc, "n": n,
                           "seed": seed})
            seed += n
    return points


def run_point(server: ManagedServer, point: dict, args, cache: pathlib.Path) -> dict:
    bodies = loadgen.encode(payloads(point["scenario"], point["n"], point["seed"],
                                     server.model_id, args.max_tokens, cache,
                                     temperature=args.temperature,
                                     system_prompt=args.system_prompt))
    total0, engine0 = server.cpu_seconds()
    roles0 = server.cpu_by_role()
    client0 = time.process_time()
    if point["mode"] == "open":
        result = asyncio.run(loadgen.open_loop(server.base, bodies, point["rate"],
                                               args.max_in_flight, seed=point["seed"]))
    else:
        result = asyncio.run(loadgen.closed_loop(server.base, bodies, point["concurrency"]))
    total1, engine1 = server.cpu_seconds()
    roles1 = server.cpu_by_role()
    summary = loadgen.summarize(result)
    # the client shares the cores: a client near a whole core would be measuring itself
    summary["client_cores"] = round((time.process_time() - client0) / result.wall_s, 2)
    n = max(summary["requests"], 1)
    summary["cpu_s_per_req"] = round((total1 - total0) / n, 4)
    summary["cpu_s_per_req_outside_engine"] = round(
        ((total1 - engine1) - (total0 - engine0)) / n, 4)
    tokens = max(summary["output_tokens"], 1)
    summary["cpu_s_per_1k_tokens"] = round((total1 - total0) * 1000 / tokens, 3)
    used = {role: seconds - roles0.get(role, 0.0) for role, seconds in roles1.items()}
    summary["cpu_s_by_role"] = {role: round(seconds, 2) for role, seconds in
                                sorted(used.items(), key=lambda kv: -kv[1]) if seconds >= 0.01}
    summary["cpu_ms_per_req_by_role"] = {role: round(seconds * 1000 / n, 1)
                                         for role, seconds in summary["cpu_s_by_role"].items()}
    return {"server": server.name, **{k: v for k, v in point.items() if k != "seed"},
            **summary}


def warm_up(server: ManagedServer, cache: pathlib.Path) -> None:
    """First requests pay one-off costs (shape compilation, caches) on every server."""
    for scenario, n in (("text", 4), ("photo-1024", 4)):
        bodies = loadgen.encode(payloads(scenario, n, 1, server.model_id, 8, cache))
        asyncio.run(loadgen.closed_loop(server.base, bodies, 4))


def _key(r: dict) -> tuple:
    return (r["scenario"], r["mode"], r.get("rate"), r.get("concurrency"))


def medians(results: list[dict]) -> list[dict]:
    """One row per server and point: the median of every number over the rounds (this box's
    run-to-run spread is large; rounds alternate the servers, so drift hits all alike)."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["server"], *_key(r)), []).append(r)
    out = []
    for rows in groups.values():
        row = dict(rows[0])
        for name in rows[0]:
            values = [r.get(name) for r in rows]
            if name != "round" and all(isinstance(v, int | float) and not isinstance(v, bool)
                                       and v == v for v in values):
                row[name] = round(statistics.median(values), 3)
        row["rounds"] = len(rows)
        row.pop("round", None)
        out.append(row)
    return out


def ratios(results: list[dict], baseline: str = BARE_VLLM) -> list[dict]:
    """ours / baseline for every point both measured."""
    key = _key

    base = {key(r): r for r in results if r["server"] == baseline}
    out = []
    for r in results:
        b = base.get(key(r))
        if r["server"] != OURS or not b:
            continue
        row = {"scenario": r["scenario"], "mode": r["mode"], "rate": r.get("rate"),
               "concurrency": r.get("concurrency"), "vs": baseline}
        for metric in ("req_per_s", "output_tok_per_s", "latency_p50_ms", "latency_p99_ms",
                       "ttft_p50_ms", "ttft_p99_ms", "cpu_s_per_req", "cpu_s_per_1k_tokens",
                       "chunk_gap_p50_ms", "chunk_gap_p99_ms"):
            value, base_value = r.get(metric), b.get(metric)
            row[metric] = round(value / base_value, 3) \
                if value is not None and base_value and base_value == base_value else None
        row["errors"] = (r["errors"], b["errors"])
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    def csv(kind):
        return lambda text: [kind(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(PRESETS), default=None,
                        help="a preset workload (module docstring); it sets the scenarios, "
                             "loads and sampling, and the other flags are ignored")
    add_model_args(parser)
    parser.add_argument("--servers", type=csv(str), default=[OURS, BARE_VLLM],
                        help=f"any of {', '.join(SERVER_NAMES)} (vLLM's own OpenAI server, "
                             "Ray Serve LLM's OpenAI app)")
    parser.add_argument("--scenarios", type=csv(str), default=list(SCENARIOS))
    parser.add_argument("--rates", type=csv(float), default=[2.0, 4.0, 8.0],
                        help="open-loop arrival rates, requests per second")
    parser.add_argument("--concurrency", type=csv(int), default=[4, 16],
                        help="closed-loop concurrencies")
    parser.add_argument("--duration-s", type=float, default=15.0,
                        help="arrivals per open-loop point = rate x duration")
    parser.add_argument("--per-worker", type=int, default=3,
                        help="requests per closed-loop worker")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--system-prompt", action="store_true",
                        help="send the model card's system prompt in every request")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every server this many times, alternating; ratios are of "
                             "the medians")
    parser.add_argument("--out", default=None, help="JSON path (plots go beside it)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.scenario:
        for name, value in PRESETS[args.scenario].items():
            setattr(args, name, value)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    if set(args.servers) - set(SERVER_NAMES):
        parser.error(f"unknown servers {sorted(set(args.servers) - set(SERVER_NAMES))}; "
                     f"choose from {', '.join(SERVER_NAMES)}")

    model_dir = model_dir_of(args.model_dir)
    stamp = records.stamp()
    work = ROOT / ".qvq" / "bench" / f"compare-{stamp}"
    cache = ROOT / ".qvq" / "bench" / "photos"
    points = plan(args)
    print(f"{len(points)} points per server; preparing photos ...", flush=True)
    prepare_photos(points, cache)

    results: list[dict] = []
    startup: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    out = records.result_path("compare", stamp, args.out)

    def report() -> dict:
        return {"benchmark": "compare", "timestamp": stamp, "machine": machine_facts(),
                "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
                "model": "tiny random-weight Qwen2-VL" if "tiny" in str(model_dir)
                else str(model_dir),
                "startup_s": startup, "unavailable": unavailable,
                "results": results, "medians": medians(results),
                "ratios": ratios(medians(results))
                + ratios(medians(results), baseline=RAY_SERVE_LLM)}
    servers = server_factories(args.servers, model_dir, work, pathlib.Path(args.config))
    for round_, (name, make) in ((r, item) for r in range(args.rounds)
                                 for item in servers.items()):
        if name in unavailable:
            continue
        try:
            server = make()
        except RuntimeError as exc:  # e.g. Ray Serve LLM's extras not installable here
            unavailable[name] = str(exc)
            print(f"skipping {name}: {exc}", flush=True)
            continue
        print(f"round {round_ + 1}/{args.rounds}: starting {server.name} ...", flush=True)
        try:
            startup.setdefault(server.name, round(server.start("/v1/models"), 1))
            warm_up(server, cache)
            for point in points:
                row = {**run_point(server, point, args, cache), "round": round_}
                results.append(row)
                records.write(out, report())  # a cut-off run keeps its points
                where = (f"rate {row['rate']:g}/s" if row["mode"] == "open"
                         else f"c={row['concurrency']}")
                print(f"  {server.name:10s} {row['scenario']:16s} {where:11s} "
                      f"{row['req_per_s']:7.2f} req/s {row['output_tok_per_s']:8.1f} tok/s  "
                      f"TTFT p50 {row['ttft_p50_ms']:8.1f}  lat p50 {row['latency_p50_ms']:8.1f}"
                      f" p99 {row['latency_p99_ms']:8.1f} ms  gap p50/p99 "
                      f"{row['chunk_gap_p50_ms']}/{row['chunk_gap_p99_ms']} ms  cpu "
                      f"{row['cpu_s_per_req']:.3f} s/req {row['cpu_s_per_1k_tokens']:.2f} s/1k "
                      f"tok  headers p50/p90 {row['headers_p50_ms']}/{row['headers_p90_ms']} "
                      f"tail p90 {row['tail_p90_ms']} ms  errors {row['errors']}", flush=True)
                print("    cpu s by role: " + ", ".join(
                    f"{role} {sec}" for role, sec in row["cpu_s_by_role"].items()), flush=True)
        except RuntimeError as exc:
            unavailable[name] = str(exc)
            print(f"{name} failed: {exc}", flush=True)
        finally:
            server.stop()

    final = report()
    if not args.no_plots and results:
        from loadtest import plots

        final["plots"] = [str(p.relative_to(out.parent)) for p in plots.draw(final, out)]
    records.write(out, final)
    for row in final["ratios"]:
        where = (f"rate {row['rate']:g}/s" if row["mode"] == "open"
                 else f"c={row['concurrency']}")
        print(f"ours/{row['vs']} {row['scenario']:16s} {where:11s} req/s {row['req_per_s']}  "
              f"tok/s {row['output_tok_per_s']}  TTFT p50 {row['ttft_p50_ms']}  "
              f"lat p50 {row['latency_p50_ms']} p99 {row['latency_p99_ms']}  "
              f"gap p99 {row['chunk_gap_p99_ms']}  cpu/req {row['cpu_s_per_req']}  "
              f"cpu/1k tok {row['cpu_s_per_1k_tokens']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
