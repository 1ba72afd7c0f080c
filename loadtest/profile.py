"""Where the time goes: a py-spy profile of every Python process of our app under load.

    python -m loadtest.profile [--size 4000x3000] [--concurrency 8] [--duration-s 30]
    python -m loadtest.profile --text --concurrency 32 --max-tokens 512 --temperature 1 \
        --system-prompt            # the reasoning-stream workload's token path

Starts our app (``qvq serve``, local Ray) on 127.0.0.1, warms it up, then samples each
Python process that does our work (Serve replicas, vLLM's engine and workers, the driver) with
``py-spy record --nonblocking`` while a closed loop of photo requests runs. Reports, per role
(router, preprocessor, generator replica, vLLM engine, Serve internals), the share of samples
and the top functions by self time and by time inclusive of callees inside ``serving/``.
Writes ``loadtest/results/profile-<stamp>.json`` and the raw collapsed stacks (``.txt``,
loadable by speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import pathlib
import re
import shutil
import subprocess
import sys
import time

from loadtest import loadgen, records
from loadtest.photos import photo_jpeg
from loadtest.records import machine_facts
from loadtest.servers import ROOT, ours
from serving.config import QVQ_SYSTEM_PROMPT

# (a substring of the process title, its role); the first match wins
ROLES = (("Router", "router"), ("ImagePreprocessor", "preprocessor"),
         ("QVQGenerator", "generator replica"), ("BatchRunner", "batch runner"),
         ("RateLimiter", "rate limiter"), ("ChatIngress", "chat ingress"),
         ("VLLM::EngineCore", "vLLM engine"), ("VLLM::", "vLLM engine"),
         ("ServeController", "Serve controller"), ("ProxyActor", "Serve proxy"),
         ("serving.cli", "qvq serve driver"), ("haproxy", "HAProxy"),
         ("loadtest.vllm_server", "vLLM API server"), ("loadtest.rayllm_server", "driver"),
         ("LLMServer", "generator replica"), ("OpenAiIngress", "router"),
         ("raylet", "raylet"), ("gcs_server", "GCS"),
         ("dashboard/agent.py", "metrics/dashboard agents"),
         ("runtime_env/agent", "metrics/dashboard agents"),
         ("dashboard/dashboard.py", "metrics/dashboard agents"),
         ("log_monitor", "log monitor"))
_PROCESS = re.compile(r'^process (\d+):"(.*)"$')


def role_of(process_frame: str) -> str:
    match = _PROCESS.match(process_frame)
    title = match.group(2) if match else process_frame
    for needle, role in ROLES:
        if needle in title:
            return role
    return "other Ray processes"


def _is_ours(path: str) -> bool:
    """py-spy writes paths relative to sys.path entries: ``serving/...`` or ``.../serving/...``."""
    return path.startswith("serving/") or "/serving/" in path


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)`` with our package paths kept."""
    match = re.match(r"^(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    if _is_ours(path):
        path = "serving/" + path.split("serving/", 1)[1]
    else:
        path = pathlib.Path(path).name
    return f"{func} ({path})"


def summarize(raw_text: str, top: int = 12) -> dict:
    """Per role: on-CPU samples (py-spy skips idle threads) and the top frames by self time
    and, inside ``serving/``, by inclusive time."""
    per_role: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    ours_inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    role_samples: collections.Counter = collections.Counter()
    for line in raw_text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        role = role_of(frames[0])
        role_samples[role] += n
        leaf = _short(frames[-1]) if len(frames) > 1 else "(no python frame)"
        per_role[role][leaf] += n
        for frame in {_short(f) for f in frames[1:] if _is_ours(f.rpartition(" (")[2])}:
            ours_inclusive[role][frame] += n
    total = sum(role_samples.values()) or 1
    return {
        "samples": total,
        "roles": {
            role: {"share": round(n / total, 4), "samples": n,
                   "top_self": [[f, c] for f, c in per_role[role].most_common(top)],
                   "top_ours_inclusive": [[f, c] for f, c
                                          in ours_inclusive[role].most_common(top)]}
            for role, n in role_samples.most_common()}}


def python_processes(root_pid: int) -> dict[int, str]:
    """pid -> title of the Python processes of the server's tree that do our work: Serve
    replicas, vLLM's engine and workers, and the driver (Ray's own daemons are left out)."""
    import psutil

    found = {}
    root = psutil.Process(root_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if title.startswith(("ray::ServeReplica", "VLLM::", "ray::ProxyActor",
                             "ray::ServeController")) or "serving.cli" in title:
            found[proc.pid] = title[:120]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "local-cpu.yaml"))
    parser.add_argument("--model-dir", default=str(ROOT / ".qvq" / "models" / "tiny-qwen2vl"))
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--system-prompt", action="store_true",
                        help="send the model card's system prompt (as compare's presets do)")
    parser.add_argument("--text", action="store_true", help="text-only requests (no photo)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    width, height = (int(x) for x in args.size.split("x"))
    stamp = records.stamp()
    work = ROOT / ".qvq" / "bench" / f"profile-{stamp}"
    cache = ROOT / ".qvq" / "bench" / "photos"
    out = records.result_path("profile", stamp, args.out)
    raw_path = out.with_suffix(".txt")
    n = max(args.concurrency * 4, 64)
    print(f"preparing {n} requests ...", flush=True)
    bodies = []
    for i in range(n):
        content: list[dict] = [{"type": "text", "text": "Describe it step by step."}]
        if not args.text:
            jpeg = photo_jpeg(width, height, seed=70_000 + i, cache_dir=cache)
            content.insert(0, {"type": "image_url", "image_url": {
                "url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}})
        messages: list[dict] = [{"role": "user", "content": content}]
        if args.system_prompt:
            messages.insert(0, {"role": "system", "content": QVQ_SYSTEM_PROMPT})
        bodies.append({"model": "qvq-72b-preview", "max_tokens": args.max_tokens,
                       "temperature": args.temperature, "messages": messages})
    encoded = loadgen.encode(bodies)

    server = ours(pathlib.Path(args.model_dir), work, pathlib.Path(args.config))
    try:
        server.start("/v1/models")
        asyncio.run(loadgen.closed_loop(server.base, encoded[:8], 4))  # warm-up
        targets = python_processes(server.proc.pid)
        work.mkdir(parents=True, exist_ok=True)
        spies = {pid: subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--nonblocking", "--rate",
             str(args.rate), "--duration", str(int(args.duration_s)), "--format", "raw",
             "--output", str(work / f"spy-{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for pid in targets}
        time.sleep(1)
        deadline = time.monotonic() + args.duration_s - 1
        served = errors = 0
        while time.monotonic() < deadline:
            result = asyncio.run(loadgen.closed_loop(server.base, encoded, args.concurrency))
            served += len(result.samples)
            errors += result.errors
        for spy in spies.values():
            spy.wait(timeout=args.duration_s + 120)
    finally:
        server.stop()
    # one collapsed-stack file, each stack rooted at its process (as --subprocesses writes)
    lines = []
    for pid, title in targets.items():
        path = work / f"spy-{pid}.txt"
        if path.exists():
            lines += [f'process {pid}:"{title}";{line}'
                      for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        print("py-spy recorded nothing (ptrace not permitted?)")
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text("\n".join(lines) + "\n")
    summary = summarize(raw_path.read_text())
    report = {"benchmark": "profile", "timestamp": stamp, "machine": machine_facts(),
              "settings": vars(args), "requests": served, "errors": errors,
              "raw_stacks": raw_path.name, **summary}
    records.write(out, report)
    for role, info in summary["roles"].items():
        print(f"{role:22s} {info['share'] * 100:5.1f}% of on-CPU samples")
        for frame, count in info["top_self"][:5]:
            print(f"    self  {count:6d}  {frame}")
        for frame, count in info["top_ours_inclusive"][:5]:
            print(f"    ours  {count:6d}  {frame}")
    print(f"requests {served}, errors {errors}; wrote {out} and {raw_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
