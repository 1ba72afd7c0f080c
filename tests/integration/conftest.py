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

API_KEY = "sk-test-integration"
OTHER_KEY = "sk-test-other"
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
    # One preprocessor replica: the cache tests assert which tier answered, and a second
    # replica (the local config autoscales at 1 request in flight) has its own memory tier.
    # Scaling itself is measured by loadtest.autoscale.
    config["deployments"]["preprocessor"]["autoscaling"] = {"min_replicas": 1,
                                                            "max_replicas": 1}
    config["storage"] = {"backend": "s3", "s3": s3_server.s3_config(bucket="qvq-test"),
                         "allowed_source_buckets": ["qvq-sources"]}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp / "serve.log").open("w")
    env = {**os.environ, "QVQ_TEST_KEYS": f"ci:{API_KEY},other:{OTHER_KEY}",
           "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--config", str(path)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"qvq serve exited early; log: {tmp / 'serve.log'}\n"
                                   + (tmp / "serve.log").read_text()[-4000:])
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("qvq serve did not become healthy in time:\n"
                                   + (tmp / "serve.log").read_text()[-4000:])
            time.sleep(2)
        yield {"base": base, "config": config, "log": tmp / "serve.log", "proc": proc,
               "s3": s3_server}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


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
