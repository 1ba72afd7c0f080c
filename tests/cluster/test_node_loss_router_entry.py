"""A GPU pod lost mid-traffic with ``server.chat_entry: router``, on the chart's topology with
two GPU pods (helm/qvq-serving/ci/tiny-gpu-group-values.yaml, two generators): what clients of
the lost generator see, and that clients of the surviving one see nothing.

With ``chat_entry: router`` the router on the CPU pod holds every client's connection, so a
stream whose generator's node dies ends with an OpenAI-style error event and ``[DONE]``, and a
non-streamed request that node was generating (nothing has reached its client) is sent again
and Serve routes it to the surviving generator: the same contract as for one dead generator
replica (tests/integration/test_faults.py), here with the whole node gone. The default,
``chat_entry: generator``, trades that for the shorter token path: the generator holds the
connection and a lost node drops it (tests/cluster/test_chart_topology.py).
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import threading
import time
from typing import Any

import httpx
import pytest

from serving.kube import chart
from tests.cluster.chart_cluster import API_KEY, CI_VALUES, MODEL, deployed

STREAMS = 4
NON_STREAMED = 4
# Long enough that nothing ends before the kill however slowly the last stream begins (a
# stream of 3000 tokens took only seconds here), and short enough for the survivors' answers
# to finish within a minute or two on this CPU.
CONTEXT = 16384
STREAM_TOKENS = 12000
NON_STREAMED_TOKENS = 4000
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def router_entry_values() -> dict[str, Any]:
    values = copy.deepcopy(chart.load_values(CI_VALUES / "tiny-gpu-group-values.yaml"))
    values["gpuWorkers"].update(replicas=2, minReplicas=2, maxReplicas=2)
    config = values["serve"]["config"]
    config["model"]["max_model_len"] = CONTEXT
    config["deployments"]["generator"]["autoscaling"] = {"min_replicas": 2, "max_replicas": 2}
    config.setdefault("server", {})["chat_entry"] = "router"
    return values


@pytest.fixture(scope="module")
def router_entry_cluster(tiny_model_dir, s3_server, tmp_path_factory):
    with deployed(router_entry_values(), model_dir=tiny_model_dir, s3_server=s3_server,
                  tmp=tmp_path_factory.mktemp("router-entry-cluster")) as running:
        yield running


class Stream:
    """One streamed chat read to its end on its own thread: its last event, and when."""

    def __init__(self, base: str):
        self.base = base
        self.chunks = 0
        self.end = "running"
        self.last_event = ""
        self.ended_at: float | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        body = {"model": MODEL, "max_tokens": STREAM_TOKENS, "stream": True, "ignore_eos": True,
                "loop_guard": "off", "messages": [{"role": "user", "content": "Go on."}]}
        last: list[str] = []
        try:
            with httpx.stream("POST", f"{self.base}/v1/chat/completions", json=body,
                              headers=HEADERS, timeout=300) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        self.chunks += 1
                        last = [*last[-1:], line]
            self.end = "[DONE]" if last[-1:] == ["data: [DONE]"] else "no [DONE]"
            self.last_event = last[0] if len(last) == 2 else ""
        except httpx.HTTPError as exc:
            self.end = f"connection error ({type(exc).__name__})"
        self.ended_at = time.monotonic()

    def event(self) -> dict[str, Any]:
        return json.loads(self.last_event[len("data: "):]) if self.last_event else {}


def test_a_lost_gpu_node_ends_its_streams_cleanly_and_resends_its_requests(
        router_entry_cluster):
    cluster, base = router_entry_cluster["cluster"], router_entry_cluster["base"]
    assert sorted(cluster.replica_nodes()["QVQGenerator"]) == ["gpu-workers-0",
                                                                "gpu-workers-1"]
    long = {"model": MODEL, "max_tokens": NON_STREAMED_TOKENS, "ignore_eos": True,
            "loop_guard": "off", "messages": [{"role": "user", "content": "Tell a story."}]}
    warm_up(base)
    streams = [Stream(base) for _ in range(STREAMS)]
    wait_for_progress(streams, chunks=2)  # every stream has begun its answer
    with concurrent.futures.ThreadPoolExecutor(NON_STREAMED) as pool:
        pending = [pool.submit(httpx.post, f"{base}/v1/chat/completions", json=long,
                               headers=HEADERS, timeout=600) for _ in range(NON_STREAMED)]
        # The engines go on stepping after the requests were sent (each stream moves on by a
        # second or more of coalesced messages), so the requests have reached their engines:
        # the lost node's ones are cut off while generating, not while queued.
        wait_for_progress(streams, chunks=min(s.chunks for s in streams) + 30)
        assert all(s.ended_at is None for s in streams), [s.end for s in streams]
        assert not any(p.done() for p in pending), [p.result().text[:200] for p in pending
                                                    if p.done()]
        cluster.kill("gpu-workers-0")
        killed_at = time.monotonic()
        answers = [p.result(timeout=600) for p in pending]
        answered_s = time.monotonic() - killed_at
    for s in streams:
        s.thread.join(timeout=300)

    broken = [s for s in streams if "error" in s.event()]
    survived = [s for s in streams if s not in broken]
    print("GPU node loss, chat_entry router:", json.dumps({
        "streams": [f"{s.end} {s.ended_at - killed_at:.1f} s after the kill: "
                    + (json.dumps(s.event()["error"]) if s in broken else
                       f"finish_reason {s.event()['choices'][0].get('finish_reason')}")
                    for s in streams],
        "non_streamed": [f"{a.status_code}, {a.json().get('usage', {}).get('completion_tokens')}"
                         f" tokens" for a in answers],
        "all_non_streamed_answered_after_kill_s": round(answered_s, 1),
        "resent_by_the_router": resent(cluster),
        "failed_as_unavailable_in_serves_handle": serve_retried(cluster)}))

    # the lost node's streams: an OpenAI error event, then [DONE], within seconds
    assert broken, "no stream was on the lost node (Serve spreads them over both generators)"
    for s in broken:
        assert s.end == "[DONE]" and s.ended_at - killed_at < 30, s.end
        assert s.event()["error"]["type"] == "service_unavailable", s.event()
    # the surviving node's streams were running at the loss and ran to their full length
    assert survived, "every stream was on the lost node"
    for s in survived:
        assert s.end == "[DONE]" and s.ended_at > killed_at, s.end
        assert s.event()["choices"][0]["finish_reason"] == "length", s.event()
    # every non-streamed request answered in full: the lost node's ones were sent again
    for a in answers:
        assert a.status_code == 200, a.text
        assert a.json()["usage"]["completion_tokens"] == NON_STREAMED_TOKENS
    # a non-streamed request of the lost node was sent again: by our router (the generator's
    # actor reported dead) or by Serve's handle itself (reported unavailable first: the
    # connection reset before the node was declared dead; Serve logs one line per request
    # that failed so, the broken streams' included)
    assert resent(cluster) >= 1 or serve_retried(cluster) > len(broken), \
        "no request was re-sent: none was on the lost node"
    assert cluster.replica_nodes()["QVQGenerator"] == ["gpu-workers-1"]


def warm_up(base: str) -> None:
    """A few short answers first, so that no engine's first steps (slower on CPU) delay the
    streams past the point where the non-streamed requests could end before the kill."""
    short = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for answer in pool.map(lambda _: httpx.post(f"{base}/v1/chat/completions", json=short,
                                                    headers=HEADERS, timeout=300), range(8)):
            assert answer.status_code == 200, answer.text


def wait_for_progress(streams: list[Stream], chunks: int) -> None:
    deadline = time.monotonic() + 120
    while min(s.chunks for s in streams) < chunks:
        assert time.monotonic() < deadline, [(s.chunks, s.end) for s in streams]
        assert all(s.ended_at is None for s in streams), [s.end for s in streams]
        time.sleep(0.05)


def router_logs(cluster) -> str:
    logs = cluster.temp_dir / "session_latest" / "logs" / "serve"
    return "".join(p.read_text(errors="replace") for p in logs.glob("replica_qvq_Router_*.log"))


def resent(cluster) -> int:
    """Requests the router sent again because the generator replica under them died."""
    return router_logs(cluster).count("sending it again")


def serve_retried(cluster) -> int:
    """Requests to a generator replica that Serve's handle in the router saw fail as
    unavailable (it sends a unary call again itself; a stream ends in our error event)."""
    return router_logs(cluster).count("Request failed because Replica(")
