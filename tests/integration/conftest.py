"""One real stack for the integration tests: `qvq serve` (local Ray + Serve + vLLM CPU engine on
the tiny model) on a free 127.0.0.1 port, with API keys on and a local image server allowed."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.image_server import image_server
from tests.integration.forcing import Forcing, forcing_for

API_KEY = "sk-test-integration"
OTHER_KEY = "sk-test-other"
# One key per limit, so each limits test starts from a full bucket (test_limits.py).
LIMITED_KEYS = {"rpm": "sk-test-rpm", "concurrent": "sk-test-concurrent",
                "tpm": "sk-test-tpm", "images": "sk-test-images", "batches": "sk-test-batches"}
KEY_LIMITS = {"rpm": {"requests_per_minute": 3}, "concurrent": {"concurrent_requests": 2},
              "tpm": {"tokens_per_minute": 3000}, "images": {"images_per_minute": 2},
              "batches": {"max_active_batches": 1}}
MAX_BODY_BYTES = 4 * 2**20
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def image_base_url():
    with image_server() as url:
        yield url


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_model_dir, image_base_url, s3_server):
    tmp = tmp_path_factory.mktemp("serve")
    config = yaml.safe_load((ROOT / "configs" / "local-cpu.yaml").read_text())
    port = free_port()
    config["model"]["path"] = str(tiny_model_dir)
    config["server"]["port"] = port
    config["image"].update(max_image_bytes=1_048_576, max_source_pixels=40_000_000,
                           max_images_per_request=4)
    config["fetch"] = {"allowed_cidrs": ["127.0.0.1/32"], "read_timeout_s": 1.0,
                       "total_timeout_s": 5.0}
    config["auth"] = {"api_keys_env": "QVQ_TEST_KEYS"}
    config["data_dir"] = str(ROOT / ".qvq")
    config["files"] = {"max_file_bytes": 262144}
    config["batch"] = {"chunk_size": 4, "poll_interval_s": 0.5, "max_concurrency": 4}
    config["reasoning"] = {"per_key": {"other": {"default_max_reasoning_tokens": 32,
                                                 "max_reasoning_tokens_ceiling": 64}}}
    config["requests"] = {"priority_key_ids": ["ci"]}
    config["limits"] = {"per_key": {f"limited-{name}": limits
                                    for name, limits in KEY_LIMITS.items()}}
    config["server"].update(max_request_body_bytes=MAX_BODY_BYTES, max_in_flight_requests=48)
    # One preprocessor replica: the cache tests assert which tier answered, and a second
    # replica (the local config autoscales at 1 request in flight) has its own memory tier.
    # Scaling itself is measured by loadtest.autoscale.
    config["deployments"]["preprocessor"]["autoscaling"] = {"min_replicas": 1,
                                                            "max_replicas": 1}
    config["storage"] = {"backend": "s3", "s3": s3_server.s3_config(bucket="qvq-test"),
                         "allowed_source_buckets": ["qvq-sources"]}
    stack = Stack(config, tmp)
    stack.state["s3"] = s3_server
    try:
        stack.start()
        yield stack.state
    finally:
        stack.stop()


class Stack:
    """``qvq serve`` with one config, on its own 127.0.0.1 port; start() waits until /health
    answers (also used to restart it), stop() ends it and everything it started."""

    def __init__(self, config: dict, tmp: pathlib.Path):
        self.tmp = tmp
        self.path = tmp / "config.yaml"
        self.path.write_text(yaml.safe_dump(config))
        keys = [f"ci:{API_KEY}", f"other:{OTHER_KEY}",
                *(f"limited-{name}:{key}" for name, key in LIMITED_KEYS.items())]
        self.env = {**os.environ, "QVQ_TEST_KEYS": ",".join(keys),
                    "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        self.base = f"http://127.0.0.1:{config['server']['port']}"
        self.state = {"base": self.base, "config": config, "log": tmp / "serve.log",
                      "start": self.start, "stop": self.stop}

    def start(self) -> None:
        log_path = self.tmp / "serve.log"
        with log_path.open("a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "serving.cli", "serve", "--config", str(self.path)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.state["proc"] = proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"qvq serve exited early; log: {log_path}\n"
                                   + log_path.read_text()[-4000:])
            try:
                if httpx.get(f"{self.base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("qvq serve did not become healthy in time:\n"
                                   + log_path.read_text()[-4000:])
            time.sleep(2)
        # the Ray session of this stack (later tests may start other Ray clusters)
        self.state["ray_session"] = pathlib.Path("/tmp/ray/session_latest").resolve()

    def stop(self) -> None:
        proc = self.state.get("proc")
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def forcing(tiny_model_dir) -> Forcing:
    """Request fields that force a loop or an early end (tests/integration/forcing.py)."""
    return forcing_for(tiny_model_dir)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server["base"], timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


@pytest.fixture
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server['base']}/v1", api_key=API_KEY, max_retries=0,
                         timeout=120)


def pytest_collection_modifyitems(items):
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)
    # the fault tests kill replicas, the object store and the whole app: they run last
    items.sort(key=lambda item: pathlib.Path(item.fspath).name == "test_faults.py")
