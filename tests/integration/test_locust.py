"""loadtest/locustfile.py against the real stack: every scenario runs, reports under its own
name, fails nothing, and the repeated-image scenario is answered from the image cache.

Locust runs as a subprocess: it monkeypatches the standard library with gevent on import."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from tests.conftest import ROOT
from tests.integration.conftest import API_KEY

# Equal-ish weights: in ~25 s of 4 users each scenario is drawn dozens of times.
WEIGHTS = "text=1,photo=1,photos=1,stream=1,repeated=2,batch=1"
ROWS = ["chat text", "chat photo", "chat 3 photos", "chat stream", "TTFT stream",
        "photo repeated (hit)", "batch upload", "batch create", "batch end-to-end"]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_scenario_runs_without_failures(server, tmp_path):
    env = {**os.environ, "QVQ_API_KEY": API_KEY, "QVQ_SCENARIO_WEIGHTS": WEIGHTS,
           "QVQ_IMAGE_SIZES": "640x480", "QVQ_MAX_TOKENS": "4", "QVQ_BATCH_LINES": "2",
           "QVQ_PHOTOS_PER_REQUEST": "3", "QVQ_BATCH_TIMEOUT_S": "120"}
    env.pop("QVQ_IMAGE_DIR", None)
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
           "--headless", "-u", "4", "-r", "4", "-t", "25s", "--host", server["base"],
           "--csv", str(tmp_path / "locust"), "--html", str(tmp_path / "locust.html"),
           "--exit-code-on-error", "1", "--stop-timeout", "120", "--only-summary"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    (tmp_path / "locust.log").write_text(run.stdout + run.stderr)
    output = run.stdout[-3000:] + run.stderr[-5000:]
    assert run.returncode == 0, output

    stats = {row["Name"]: row for row in read_csv(tmp_path / "locust_stats.csv")}
    missing = [name for name in ROWS if int(stats.get(name, {}).get("Request Count", 0)) < 1]
    assert not missing, f"scenarios that never reported: {missing}\n{output}"
    assert stats["Aggregated"]["Failure Count"] == "0", output
    assert read_csv(tmp_path / "locust_failures.csv") == []
    assert float(stats["TTFT stream"]["Median Response Time"]) > 0
    assert "image-cache hits" in run.stdout + run.stderr
    html = (tmp_path / "locust.html").read_text()
    assert "chat stream" in html and "batch end-to-end" in html
