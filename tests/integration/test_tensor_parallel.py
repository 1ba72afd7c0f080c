"""Tensor parallel through Ray workers, for real, on CPU: a generator with
``tensor_parallel_size: 2`` whose two TP workers vLLM's own Ray executor starts inside the
replica's placement group (bundle 0 the replica, then one ``{worker_resource: 1, CPU: 1}``
bundle per worker, STRICT_PACK: the production bundle code, with a custom resource where
production has GPUs). The only test-only piece is tests/integration/vllm_cpu_ray.py, which
tells vLLM's CPU platform that resource's name (see its docstring for what it changes).

- text and image requests through the official client;
- a greedy answer is the same tokens as the TP=1 stack's (the session server);
- one TP worker killed: the replica fails its health check, Serve replaces it, requests
  succeed again (the recovery time is printed and written next to the stack's log).
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import openai
import psutil
import pytest
import yaml

from tests.conftest import ROOT
from tests.images import data_url, encode, photo
from tests.integration.conftest import API_KEY, Stack, free_port
from tests.integration.forcing import RUNS_TO_MAX_TOKENS

MODEL = "qvq-72b-preview"
DEVICE_KEY = "qvq_tp_slot"
WORKER_TITLE = "ray::CpuRayWorkerProc"
GREEDY = {"model": MODEL, "max_tokens": 16, "temperature": 0.0,
          "messages": [{"role": "user", "content": "Count the apples."}],
          "extra_body": RUNS_TO_MAX_TOKENS}


def tp_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if WORKER_TITLE in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def tp_stack(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("tp2")
    config = yaml.safe_load((ROOT / "configs" / "local-cpu.yaml").read_text())
    config["model"].update(path=str(tiny_model_dir), tensor_parallel_size=2,
                           distributed_executor_backend="tests.integration.vllm_cpu_ray."
                                                        "CpuRayExecutor")
    config["deployments"]["generator"].update(num_gpus_per_worker=1, worker_resource=DEVICE_KEY)
    config["deployments"]["preprocessor"]["autoscaling"] = {"min_replicas": 1,
                                                            "max_replicas": 1}
    # Serve's Python proxy: HAProxy's stats ports are fixed, and the session stack holds them
    config["server"].update(port=free_port(), ingress="python")
    config["ray"].update(num_cpus=8, resources={DEVICE_KEY: 2})
    config["auth"] = {"api_keys_env": "QVQ_TEST_KEYS"}
    config["data_dir"] = str(ROOT / ".qvq")
    config["storage"] = {"local": {"root": str(tmp / "store")}}
    stack = Stack(config, tmp)
    # the executor class is imported by the engine core and every TP worker
    stack.env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")])),
                     QVQ_TEST_RAY_DEVICE_KEY=DEVICE_KEY)
    try:
        stack.start()
        yield stack.state
    finally:
        stack.stop()
    deadline = time.monotonic() + 30
    while tp_workers() and time.monotonic() < deadline:
        time.sleep(1)
    assert not tp_workers(), "TP workers outlived their stack"


def client_of(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=API_KEY, max_retries=0,
                         timeout=120)


def available_resources(session) -> dict[str, float]:
    """The raylet's own account (its periodic debug_state dump): resources left per name,
    placement-group bundles included (``<resource>_group_<bundle>_<pg id>``)."""
    text = (session / "logs" / "debug_state.txt").read_text()
    available = text.split('"available": {', 1)[1].split("}", 1)[0]
    pairs = (item.rsplit(":", 1) for item in available.split(", "))
    return {name.strip(): float(value.strip(" []")) for name, value in pairs}


def test_two_tp_workers_in_the_replicas_placement_group(tp_stack):
    """The two workers are this stack's Ray actors and hold the device resource of bundles 1
    and 2 of one placement group, whose bundle 0 holds the replica: vLLM's executor placed
    them in the replica's placement group."""
    assert httpx.get(f"{tp_stack['base']}/health", timeout=30).status_code == 200
    workers = tp_workers()
    assert len(workers) == 2
    session = tp_stack["ray_session"]
    parents = [psutil.Process(w.ppid()) for w in workers]
    assert all(p.name() == "raylet" and session.name in " ".join(p.cmdline())
               for p in parents), "TP workers are not this stack's Ray workers"
    deadline = time.monotonic() + 60
    while True:
        left = available_resources(session)
        groups = {name.rsplit("_", 1)[1] for name in left
                  if name.startswith(f"{DEVICE_KEY}_group_1_")}
        taken = [pg for pg in groups if left.get(f"{DEVICE_KEY}_group_1_{pg}") == 0
                 and left.get(f"{DEVICE_KEY}_group_2_{pg}") == 0
                 and left.get(f"CPU_group_0_{pg}") == 0]
        if taken or time.monotonic() > deadline:
            break
        time.sleep(2)  # the raylet writes its state every few seconds
    assert len(taken) == 1, left
    assert left[DEVICE_KEY] == 0  # nothing of the device resource outside that group


def test_text_and_image_through_the_official_client(tp_stack):
    client = client_of(tp_stack)
    text = client.chat.completions.create(**GREEDY)
    assert text.usage.completion_tokens == 16
    image = data_url(encode(photo(320, 240, seed=9), "JPEG"), "image/jpeg")
    seen = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                     {"type": "text", "text": "What is this?"}]}])
    assert seen.usage.prompt_tokens > text.usage.prompt_tokens


def test_greedy_tokens_equal_tensor_parallel_one(tp_stack, openai_client):
    one = openai_client.chat.completions.create(**GREEDY).choices[0].message.content
    two = client_of(tp_stack).chat.completions.create(**GREEDY).choices[0].message.content
    assert two == one


def test_a_killed_tp_worker_gets_the_replica_replaced(tp_stack):
    client = client_of(tp_stack)
    before = client.chat.completions.create(**GREEDY).choices[0].message.content
    victim = tp_workers()[-1]
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    failures, unhealthy_at, recovered_at = 0, None, None
    while time.monotonic() - killed_at < 300:
        health = httpx.get(f"{tp_stack['base']}/health", timeout=30).status_code
        if health != 200 and unhealthy_at is None:
            unhealthy_at = time.monotonic()
        if health == 200 and victim.pid not in {p.pid for p in tp_workers()} \
                and len(tp_workers()) == 2:
            try:
                after = client.chat.completions.create(**GREEDY).choices[0].message.content
                recovered_at = time.monotonic()
                break
            except openai.APIError:
                failures += 1
        time.sleep(2)
    assert recovered_at is not None, "the generator did not come back within 300 s"
    assert after == before
    timing = {"unhealthy_after_s": None if unhealthy_at is None
              else round(unhealthy_at - killed_at, 1),
              "serving_again_after_s": round(recovered_at - killed_at, 1),
              "failed_requests_while_down": failures}
    (tp_stack["log"].parent / "tp-recovery.json").write_text(json.dumps(timing))
    print("TP worker kill:", timing)
