"""Overload: open-loop load at 10x measured capacity against our app (tiny model, local CPU).

    python -m loadtest.overload [--factor 10] [--duration-s 60]

1. Capacity: closed-loop text requests (``--max-tokens``, 128 at concurrency 32) -> C req/s.
2. Baseline: Poisson arrivals at 0.7x C for ``--baseline-s``.
3. Overload: Poisson arrivals at ``--factor`` x C for ``--duration-s``, then 0.7x C again.
Requests are not streamed (``loadgen.plain_request``). Each phase reports the rate requests
actually reached the wire (``sent_per_s``, from the time each request's last byte was written),
beside the rate offered, so a client that cannot keep up is seen, not hidden; latency is given
both from the intended send (``admitted_p99_ms``, which charges the client's lag too) and from
the written request (``admitted_server_p99_ms``).
While it runs, the resident memory of the server's whole process tree and each process's CPU
time are sampled every second (per phase: memory at its start and end, cores used by role).
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
import threading
import time

import psutil

from loadtest import loadgen, records
from loadtest.loadgen import percentile
from loadtest.profile import role_of
from loadtest.servers import ROOT, ours


class TreeSampler(threading.Thread):
    """Every ``every_s``: resident memory of the server's whole process tree, and each
    process's CPU seconds (by role, as ``loadtest.profile`` names them)."""

    def __init__(self, pid: int, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []  # (t, MiB)
        self.cpu: list[tuple[float, dict[int, tuple[str, float]]]] = []  # (t, pid -> role, s)
        self.rss: list[tuple[float, dict[str, float]]] = []  # (t, role -> MiB)
        self._done = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._done.is_set():
            total = 0
            cpu: dict[int, tuple[str, float]] = {}
            rss: dict[str, float] = {}
            try:
                root = psutil.Process(self.pid)
                for p in [root, *root.children(recursive=True)]:
                    try:
                        with p.oneshot():
                            resident = p.memory_info().rss
                            times = p.cpu_times()
                            role = role_of(" ".join(p.cmdline()))
                        total += resident
                        cpu[p.pid] = (role, times.user + times.system)
                        rss[role] = rss.get(role, 0.0) + resident / 2**20
                    except psutil.Error:
                        continue
            except psutil.Error:
                pass
            now = round(time.monotonic() - self.t0, 1)
            self.samples.append((now, round(total / 2**20, 1)))
            self.cpu.append((now, cpu))
            self.rss.append((now, rss))
            self._done.wait(self.every_s)

    def window(self, start_s: float, end_s: float) -> dict:
        """One phase (sampler seconds): memory over its first and last 5 s and its peak, and
        the share of a core each role used."""
        mib = [m for t, m in self.samples if start_s <= t <= end_s]
        cpu = [(t, c) for t, c in self.cpu if start_s <= t <= end_s]
        if not mib or len(cpu) < 2:
            return {}
        head, tail = mib[:5], mib[-5:]
        (t_first, first), (t_last, last) = cpu[0], cpu[-1]
        used: dict[str, float] = {}
        for pid, (role, seconds) in last.items():
            used[role] = used.get(role, 0.0) + seconds - first.get(pid, (role, seconds))[1]
        span = t_last - t_first
        by_role = [r for t, r in self.rss if start_s <= t <= end_s]
        growth = {role: round(by_role[-1].get(role, 0.0) - by_role[0].get(role, 0.0), 1)
                  for role in by_role[-1]}
        return {"memory_mib": {"first_5s_mean": round(sum(head) / len(head), 1),
                               "last_5s_mean": round(sum(tail) / len(tail), 1),
                               "max": max(mib),
                               "growth_by_role": {r: g for r, g in sorted(
                                   growth.items(), key=lambda kv: -abs(kv[1])) if g}},
                "server_cpu_cores": {role: round(s / span, 2) for role, s in
                                     sorted(used.items(), key=lambda kv: -kv[1]) if s > 0}}

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


def ms(values: list[float | None], q: float) -> float:
    return round(percentile([v for v in values if v is not None], q) * 1e3, 1)


def phase(result: loadgen.LoadResult, offered_rate: float) -> dict:
    samples = result.samples
    ok = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status == 503]
    other: dict[str, int] = {}
    for s in samples:
        if s.status not in (200, 503):
            other[str(s.status)] = other.get(str(s.status), 0) + 1
    span = [s.sent_at for s in samples if s.sent_at is not None]
    send_span_s = max(span) - min(span) if span else float("nan")
    return {
        "offered_req_per_s": round(offered_rate, 2), "requests": len(samples),
        "sent_per_s": round(loadgen.sent_per_s(samples), 2),
        "send_span_s": round(send_span_s, 1), "wall_s": round(result.wall_s, 1),
        "admitted": len(ok), "admitted_per_s": round(len(ok) / send_span_s, 2),
        "admitted_p50_ms": ms([s.latency_s for s in ok], 0.5),
        "admitted_p99_ms": ms([s.latency_s for s in ok], 0.99),
        "admitted_server_p99_ms": ms([s.server_latency_s for s in ok], 0.99),
        "refused_503": len(refused),
        "refused_with_retry_after": sum(s.retry_after is not None for s in refused),
        "refused_p50_ms": ms([s.latency_s for s in refused], 0.5),
        "refused_p99_ms": ms([s.latency_s for s in refused], 0.99),
        "refused_server_p99_ms": ms([s.server_latency_s for s in refused], 0.99),
        "other_statuses": other,
        "other_examples": sorted({s.error for s in samples
                                  if s.status not in (200, 503) and s.error})[:3],
        "new_connections": sum(s.connect_s is not None for s in samples),
        "connect_p99_ms": ms([s.connect_s for s in samples], 0.99),
        "connect_max_ms": ms([s.connect_s for s in samples], 1.0),
        "send_lag_p50_ms": ms([s.send_lag_s for s in samples], 0.5),
        "send_lag_p99_ms": ms([s.send_lag_s for s in samples], 0.99)}


def run_phase(base: str, n: int, rate: float, max_tokens: int, model: str,
              seed: int) -> tuple[loadgen.LoadResult, float]:
    """The phase's samples, and the CPU seconds this client spent offering them."""
    cpu0 = time.process_time()
    result = asyncio.run(loadgen.open_loop(base, bodies(n, max_tokens, model), rate,
                                           max_in_flight=n, seed=seed, timeout_s=300,
                                           send=loadgen.plain_request))
    return result, time.process_time() - cpu0


def timeline(result: loadgen.LoadResult) -> list[list[float]]:
    """Per request: [intended start, send lag, latency] in seconds from the phase's first
    intended start, and the status; enough to see when and where time went."""
    t0 = min(s.started_at for s in result.samples)
    return [[round(s.started_at - t0, 3),
             round(s.send_lag_s, 3) if s.send_lag_s is not None else None,
             round(s.latency_s, 3), s.status]
            for s in sorted(result.samples, key=lambda s: s.started_at)]


def capacity(base: str, max_tokens: int, model: str, concurrency: int = 32) -> float:
    """Closed loop at a concurrency the engine batches fully: admitted answers per second."""
    result = asyncio.run(loadgen.closed_loop(base, bodies(4 * concurrency, max_tokens, model),
                                             concurrency, timeout_s=300,
                                             send=loadgen.plain_request))
    return len(result.ok) / result.wall_s


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
        asyncio.run(loadgen.closed_loop(server.base, bodies(16, args.max_tokens, model), 8,
                                        send=loadgen.plain_request))  # warm
        cap = capacity(server.base, args.max_tokens, model)
        report["capacity"] = {"req_per_s": round(cap, 2), "closed_loop_concurrency": 32}
        print(f"capacity: {cap:.2f} req/s", flush=True)
        sampler = TreeSampler(server.proc.pid)
        sampler.start()
        phases: dict[str, dict] = {}
        timelines: dict[str, list] = {}
        for name, factor, seconds in (("baseline", 0.7, args.baseline_s),
                                      ("overload", args.factor, args.duration_s),
                                      ("after", 0.7, args.baseline_s)):
            rate = cap * factor
            n = max(1, int(rate * seconds))
            began = time.monotonic() - sampler.t0
            result, client_cpu_s = run_phase(server.base, n, rate, args.max_tokens, model,
                                             seed=len(phases))
            phases[name] = phase(result, rate)
            phases[name]["factor_on_wire"] = round(phases[name]["sent_per_s"] / cap, 2)
            phases[name]["client_cpu_share"] = round(client_cpu_s / result.wall_s, 2)
            phases[name].update(sampler.window(began, time.monotonic() - sampler.t0))
            timelines[name] = timeline(result)
            print(name, json.dumps(phases[name]), flush=True)
        memory = sampler.stop()
        report["phases"] = phases
        report["timelines"] = timelines
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
    out = records.write(records.result_path("overload", records.stamp()), report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
