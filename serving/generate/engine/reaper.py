"""Take vLLM's engine processes down with the replica that started them.

vLLM runs its engine core (and its workers) in child processes that do not watch the process
that started them: when a generator replica dies without shutting its engine down (SIGKILLed
by Serve or Ray, killed by the kernel for memory, its actor killed in a test), they live on as
orphans, busy-polling their sockets and holding their memory (GPU memory on a GPU node) until
the node goes away. A replacement replica then shares the machine with a dead one's engine.

:func:`watch` starts a small reaper process that blocks reading a pipe whose write end only the
replica holds. However the replica ends, the kernel closes that end, the read returns, and the
reaper kills the processes it was given, each identified by PID *and* creation time, so a
reused PID is never hit. A clean shutdown goes the same way: the engine has exited by then and
there is nothing left to kill.
"""

from __future__ import annotations

import os
import subprocess
import sys


def watch(pids: list[int]) -> subprocess.Popen | None:
    """Kill ``pids`` (and what they started) once this process is gone. None when there is
    nothing to watch. Keep the returned object: its pipe is what the reaper waits on."""
    import psutil

    targets = []
    for pid in pids:
        try:
            targets.append(f"{pid}:{psutil.Process(pid).create_time()!r}")
        except psutil.NoSuchProcess:
            continue
    if not targets:
        return None
    return subprocess.Popen([sys.executable, "-m", "serving.generate.engine.reaper", *targets],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True)


def children_started_by(before: set[int]) -> list[int]:
    """This process's descendants that were not there in ``before`` (PIDs)."""
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]


def descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill(targets: list[str]) -> None:
    import psutil

    victims = []
    for target in targets:
        pid, created = target.split(":", 1)
        try:
            process = psutil.Process(int(pid))
            if process.create_time() != float(created):
                continue  # the PID now names another process
            victims += [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)


def main(argv: list[str]) -> int:
    # Blocks until every write end of stdin is closed: the replica exited or was killed.
    while os.read(0, 4096):
        pass
    _kill(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
