"""Autoscaling under load: step the offered load up and down against the local app and record
replicas per deployment over time from Serve's own status.

    python -m loadtest.autoscale [--steps 0.5:20,4:60,8:60,1:40,0:70] [--size 2048x1536]

Runs the app in this process's Ray (as ``qvq serve`` would, with the given config and its
image cache off), sends open-loop photo requests (``--photos`` photo-like JPEGs in turn,
``max_tokens`` 1, so image preprocessing is the load), polls ``serve.status()`` every
``--poll-s``, and reports for each deployment the time from a load step to its first scale-up
or scale-down, the errors seen while scaling, and a plot (offered load and replicas per
deployment vs time). Writes ``loadtest/results/autoscale-<stamp>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import pathlib
import threading
import time

import yaml

from loadtest import loadgen, records
from loadtest.photos import photo_jpeg
from loadtest.records import machine_facts
from loadtest.servers import ROOT, free_port


def parse_steps(text: str) -> list[tuple[float, float]]:
    """``rate:seconds,...`` -> [(rate, seconds)]."""
    steps = []
    for part in text.split(","):
        rate, _, seconds = part.partition(":")
        steps.append((float(rate), float(seconds)))
    return steps


class StatusRecorder(threading.Thread):
    """Samples running replicas of every deployment of one app."""

    def __init__(self, app: str, poll_s: float):
        super().__init__(daemon=True)
        self.app, self.poll_s = app, poll_s
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        from ray import serve

        while not self._stop_event.is_set():
            status = serve.status().applications.get(self.app)
            if status is not None:
                self.samples.append({
                    "t": round(time.monotonic() - self.t0, 2),
                    "replicas": {name: int(d.replica_states.get("RUNNING", 0))
                                 for name, d in status.deployments.items()},
                    "starting": {name: int(d.replica_states.get("STARTING", 0))
                                 for name, d in status.deployments.items()}})
            self._stop_event.wait(self.poll_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def scaling_events(samples: list[dict], steps: list[dict]) -> dict[str, list[dict]]:
    """Per deployment: each change of running replicas, and how long after the last load step
    in the same direction it came."""
    events: dict[str, list[dict]] = {}
    for prev, cur in zip(samples, samples[1:], strict=False):
        for name, n in cur["replicas"].items():
            before = prev["replicas"].get(name, n)
            if n == before:
                continue
            direction = "up" if n > before else "down"
            trigger = None
            for step in steps:
                if step["start_s"] > cur["t"]:
                    break
                if step["direction"] == direction:
                    trigger = step
            events.setdefault(name, []).append({
                "t": cur["t"], "from": before, "to": n, "direction": direction,
                "after_step_s": round(cur["t"] - trigger["start_s"], 1) if trigger else None,
                "step_rate": trigger["rate"] if trigger else None})
    return events


async def drive(base: str, steps: list[tuple[float, float]], bodies_for, t0: float,
                max_in_flight: int) -> tuple[list[dict], list[dict]]:
    """Run each step's open-loop load; returns (per-step records, per-request samples)."""
    step_records, samples = [], []
    prev_rate = 0.0
    seed = 50_000
    tasks = []
    for rate, seconds in steps:
        start = round(time.monotonic() - t0, 2)
        direction = "up" if rate > prev_rate else "down" if rate < prev_rate else "flat"
        step_records.append({"rate": rate, "seconds": seconds, "start_s": start,
                        "direction": direction})
        prev_rate = rate
        if rate <= 0:
            await asyncio.sleep(seconds)
            continue
        n = max(1, round(rate * seconds))
        bodies = bodies_for(n, seed)
        seed += n

        async def step(bodies=bodies, rate=rate, start=start):
            result = await loadgen.open_loop(base, bodies, rate, max_in_flight, seed=int(start))
            for s in result.samples:
                samples.append({"step_start_s": start, "ok": s.ok, "latency_s": s.latency_s,
                                "error": s.error})

        tasks.append(asyncio.create_task(step()))
        await asyncio.sleep(seconds)
    await asyncio.gather(*tasks)
    return step_records, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "local-cpu.yaml"))
    parser.add_argument("--model-dir", default=str(ROOT / ".qvq" / "models" / "tiny-qwen2vl"))
    parser.add_argument("--steps", default="0.5:20,4:60,8:60,1:40,0:70",
                        help="rate:seconds list (requests/s, open loop)")
    parser.add_argument("--size", default="2048x1536", help="photo size WxH")
    parser.add_argument("--photos", type=int, default=48,
                        help="distinct photos, cycled; the app's image cache is turned off so "
                             "every request is decoded again")
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    steps = parse_steps(args.steps)
    width, height = (int(x) for x in args.size.split("x"))

    from serving.config import config_from_dict
    from serving.launch import running_app

    stamp = records.stamp()
    work = ROOT / ".qvq" / "bench" / f"autoscale-{stamp}"
    cache = ROOT / ".qvq" / "bench" / "photos"
    raw = yaml.safe_load(pathlib.Path(args.config).read_text())
    raw["model"]["path"] = args.model_dir
    raw["server"] = {**raw.get("server", {}), "port": free_port()}
    raw["auth"] = {"api_keys_env": None}
    raw["storage"] = {"backend": "local", "local": {"root": str(work / "store")}}
    raw["data_dir"] = str(ROOT / ".qvq")
    raw["cache"] = {"memory_mib": 0, "store_tier": False}
    config = config_from_dict(raw, source=args.config)
    print(f"preparing {args.photos} photos of {args.size} ...", flush=True)

    def bodies_for(n: int, seed: int) -> list[bytes]:
        out = []
        for i in range(n):
            jpeg = photo_jpeg(width, height, seed=50_000 + (seed + i) % args.photos,
                              cache_dir=cache)
            out.append({"model": config.model.served_name, "max_tokens": 1, "temperature": 0,
                        "messages": [{"role": "user", "content": [
                            {"type": "image_url", "image_url": {
                                "url": "data:image/jpeg;base64,"
                                       + base64.b64encode(jpeg).decode()}},
                            {"type": "text", "text": "What is this?"}]}]})
        return loadgen.encode(out)

    bodies_for(args.photos, 0)  # fills the photo cache before any clock starts

    with running_app(config, address=None, host="127.0.0.1", log_to_driver=False) as base:
        warm = bodies_for(2, 1)
        asyncio.run(loadgen.closed_loop(base, warm, 2))
        recorder = StatusRecorder(config.app_name, args.poll_s)
        recorder.start()
        print("stepping load: " + ", ".join(f"{r:g}/s for {s:g}s" for r, s in steps),
              flush=True)
        try:
            step_records, samples = asyncio.run(drive(base, steps, bodies_for, recorder.t0,
                                                 args.max_in_flight))
        finally:
            recorder.stop()

    events = scaling_events(recorder.samples, step_records)
    errors = [s for s in samples if not s["ok"]]
    autoscaling = {name: getattr(config.deployments, role).autoscaling.model_dump()
                   for name, role in (("Router", "router"), ("ImagePreprocessor", "preprocessor"),
                                      ("QVQGenerator", "generator"))}
    report = {"benchmark": "autoscale", "timestamp": stamp, "machine": machine_facts(),
              "settings": {"steps": args.steps, "size": args.size, "config": args.config,
                           "poll_s": args.poll_s},
              "autoscaling": autoscaling, "steps": step_records, "events": events,
              "requests": len(samples), "errors": len(errors),
              "error_examples": sorted({e["error"] for e in errors if e["error"]})[:5],
              "latency_p50_ms_per_step": {
                  str(r["rate"]): round(loadgen.percentile(
                      [s["latency_s"] for s in samples if s["ok"]
                       and s["step_start_s"] == r["start_s"]], 0.5) * 1000, 1)
                  for r in step_records if r["rate"] > 0},
              "samples": recorder.samples}
    out = records.result_path("autoscale", stamp, args.out)
    report["plot"] = _plot(report, out.with_suffix(".png")).name
    records.write(out, report)
    for name, evs in events.items():
        for e in evs:
            print(f"  {name:18s} {e['from']} -> {e['to']} at {e['t']:6.1f}s "
                  f"({e['after_step_s']} s after the step to {e['step_rate']}/s)")
    print(f"requests {len(samples)}, errors {len(errors)}; wrote {out}")
    return 0 if not errors else 1


def _plot(report: dict, path: pathlib.Path) -> pathlib.Path:
    from loadtest.plots import plt  # pyplot with the Agg backend selected

    samples = report["samples"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    steps = report["steps"]
    for step, nxt in zip(steps, [*steps[1:], None], strict=True):
        # a step lasts until the next one began (arrivals can run late on a saturated box)
        end = nxt["start_s"] if nxt else step["start_s"] + step["seconds"]
        top.hlines(step["rate"], step["start_s"], end, color="tab:gray")
    top.set(ylabel="offered load (req/s)", title="Autoscaling under stepped photo load")
    names = sorted({n for s in samples for n in s["replicas"]})
    for name in names:
        bottom.step([s["t"] for s in samples], [s["replicas"].get(name, 0) for s in samples],
                    where="post", label=name)
    bottom.set(xlabel="time (s)", ylabel="running replicas")
    bottom.legend()
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
