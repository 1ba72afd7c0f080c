"""The engine reaper: processes a replica started die with it, however it ends (here: a
stand-in parent SIGKILLed after starting a long-running child and its reaper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from tests.conftest import ROOT

PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from serving.generate.engine import reaper
    before = reaper.descendants()
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    guard = reaper.watch(reaper.children_started_by(before))
    print(engine.pid, guard.pid, flush=True)
    time.sleep(600)
""")


def _wait_gone(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_a_killed_parents_engine_is_killed_too():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    engine_pid, guard_pid = (int(x) for x in parent.stdout.readline().split())
    try:
        assert psutil.Process(engine_pid).is_running()
        parent.send_signal(signal.SIGKILL)  # no shutdown code runs
        parent.wait()
        assert _wait_gone(engine_pid), "the orphaned engine is still running"
        assert _wait_gone(guard_pid), "the reaper did not exit after its work"
    finally:
        for pid in (engine_pid, guard_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_reused_pid_is_left_alone():
    from serving.generate.engine.reaper import _kill

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _kill([f"{bystander.pid}:1.0"])  # same PID, another creation time
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_nothing_to_watch_starts_nothing():
    from serving.generate.engine.reaper import watch

    assert watch([]) is None
    assert watch([2**22 + 12345]) is None  # no such process
