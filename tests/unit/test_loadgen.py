"""The load generator measures what it claims: TTFT from the first content delta, latency from
the intended start (open loop), tokens from the usage chunk; the comparison's points, ratios and
plots are built from those samples."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import threading
import time

import pytest

from loadtest import compare, loadgen


class _SSE(http.server.BaseHTTPRequestHandler):
    delay_first_s = 0.05
    delay_total_s = 0.10

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["model"] in ("missing", "busy"):
            status, message = (404, "no such model") if body["model"] == "missing" else (
                503, "overloaded")
            payload = json.dumps({"error": {"message": message}}).encode()
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "2")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if not body.get("stream"):
            time.sleep(self.delay_total_s)
            payload = json.dumps({"choices": [{"message": {"content": "Hi"}}],
                                  "usage": {"completion_tokens": 5}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(self.delay_first_s)
        for chunk in ({"choices": [{"delta": {"role": "assistant"}}]},
                      {"choices": [{"delta": {"content": "Hi"}}]}):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        time.sleep(self.delay_total_s - self.delay_first_s)
        usage = {"choices": [], "usage": {"completion_tokens": 7}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture(scope="module")
def sse_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    with contextlib.suppress(Exception):
        server.server_close()


def test_closed_loop_measures_ttft_latency_and_tokens(sse_server):
    bodies = loadgen.encode([{"model": "m", "messages": []}] * 6)
    assert json.loads(bodies[0])["stream_options"] == {"include_usage": True}
    result = asyncio.run(loadgen.closed_loop(sse_server, bodies, 3))
    assert result.errors == 0 and len(result.samples) == 6
    for s in result.samples:
        assert 0.04 <= s.ttft_s < s.latency_s
        assert s.latency_s >= 0.09
        assert s.output_tokens == 7
        # headers before the first text (the server sends them at once), the [DONE] last
        assert 0 <= s.headers_s < s.ttft_s and 0 <= s.tail_s < 0.04
    summary = loadgen.summarize(result)
    assert summary["headers_p90_ms"] < summary["ttft_p50_ms"]
    assert summary["output_tok_per_s"] == pytest.approx(42 / result.wall_s, rel=0.01)
    assert summary["ttft_p50_ms"] < summary["latency_p50_ms"]


def test_open_loop_charges_queueing_to_the_server(sse_server):
    # 20 req/s offered, one slot: arrivals wait for the slot, and their latency counts it
    bodies = loadgen.encode([{"model": "m", "messages": []}] * 8)
    result = asyncio.run(loadgen.open_loop(sse_server, bodies, 20.0, max_in_flight=1))
    latencies = sorted(s.latency_s for s in result.samples)
    assert latencies[-1] > 0.4  # the last one queued behind ~7 others of 0.1 s
    assert max(s.client_wait_s for s in result.samples) > 0.2


def test_errors_are_counted_with_their_message(sse_server):
    bodies = loadgen.encode([{"model": "missing", "messages": []}])
    result = asyncio.run(loadgen.closed_loop(sse_server, bodies, 1))
    assert result.errors == 1
    assert "HTTP 404" in result.samples[0].error and "no such model" in result.samples[0].error


def test_plain_requests_record_status_retry_after_and_the_wire_send(sse_server):
    # one slot at 20 req/s: the later requests reach the wire late, and the sample says so
    bodies = [json.dumps({"model": m, "messages": []}).encode()
              for m in ("m", "m", "m", "m", "busy", "busy")]
    result = asyncio.run(loadgen.open_loop(sse_server, bodies, 20.0, max_in_flight=1,
                                           send=loadgen.plain_request))
    by_status = sorted((s.status, s.retry_after, s.output_tokens) for s in result.samples)
    assert by_status == [(200, None, 5)] * 4 + [(503, "2", 0)] * 2
    for s in result.samples:
        assert s.sent_at is not None and s.started_at <= s.sent_at
        assert 0 <= s.server_latency_s <= s.latency_s
        assert s.send_lag_s == pytest.approx(s.latency_s - s.server_latency_s)
    assert max(s.send_lag_s for s in result.samples) > 0.15  # waited behind 0.1 s answers
    # four 0.1 s answers hold the single slot before the last send: at most 5 / 0.4 s
    assert loadgen.sent_per_s(result.samples) < 13


def test_sent_per_s_counts_over_the_send_span():
    samples = [loadgen.Sample(True, 0.1, None, 0, sent_at=t) for t in (10.0, 10.5, 11.0, 12.0)]
    assert loadgen.sent_per_s(samples) == pytest.approx(1.5)
    assert loadgen.sent_per_s(samples[:1]) != loadgen.sent_per_s(samples[:1])  # NaN


def test_plan_gives_every_point_distinct_images():
    args = argparse.Namespace(
        scenarios=["text", "photo-1024"], rates=[1.0, 2.0], concurrency=[2], duration_s=4,
        per_worker=2)
    points = compare.plan(args)
    assert [(p["scenario"], p["mode"], p["n"]) for p in points] == [
        ("text", "open", 4), ("text", "open", 8), ("text", "closed", 4),
        ("photo-1024", "open", 4), ("photo-1024", "open", 8), ("photo-1024", "closed", 4)]
    seeds = [range(p["seed"], p["seed"] + p["n"]) for p in points]
    flat = [s for r in seeds for s in r]
    assert len(flat) == len(set(flat))


def _row(server, scenario, mode, value, **kw):
    return {"server": server, "scenario": scenario, "mode": mode, "req_per_s": value,
            "output_tok_per_s": value * 10, "latency_p50_ms": 100 / value,
            "latency_p99_ms": 200 / value, "ttft_p50_ms": 50 / value, "ttft_p99_ms": 90 / value,
            "cpu_s_per_req": 0.1, "errors": 0, "latencies_ms": [10.0, 20.0, 30.0], **kw}


def test_ratios_and_plots(tmp_path):
    results = [_row("ours", "text", "open", 4.0, rate=2.0),
               _row("bare-vllm", "text", "open", 2.0, rate=2.0),
               _row("ours", "text", "closed", 3.0, concurrency=4),
               _row("bare-vllm", "text", "closed", 3.0, concurrency=4),
               _row("ours", "text", "closed", 6.0, concurrency=16),
               _row("bare-vllm", "text", "closed", 4.0, concurrency=16)]
    rows = compare.ratios(results)
    assert len(rows) == 3
    assert rows[0]["req_per_s"] == 2.0 and rows[0]["latency_p50_ms"] == 0.5
    from loadtest import plots

    report = {"results": results, "machine": {"cores": 2, "cpu": "x"}, "model": "tiny",
              "settings": {"max_tokens": 16}}
    written = plots.draw(report, tmp_path / "compare-x.json")
    assert [p.name for p in written] == ["compare-x-throughput.png", "compare-x-latency-cdf.png",
                                         "compare-x-ttft.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_autoscale_events_are_attributed_to_the_step_that_caused_them():
    from loadtest.autoscale import parse_steps, scaling_events

    assert parse_steps("0.5:20,4:60,0:30") == [(0.5, 20.0), (4.0, 60.0), (0.0, 30.0)]
    steps = [{"rate": 0.5, "start_s": 0.0, "direction": "up"},
             {"rate": 4.0, "start_s": 20.0, "direction": "up"},
             {"rate": 0.0, "start_s": 80.0, "direction": "down"}]
    samples = [{"t": t, "replicas": {"ImagePreprocessor": n, "Router": 1}}
               for t, n in ((19.0, 1), (27.5, 2), (90.0, 2), (101.0, 1))]
    events = scaling_events(samples, steps)
    assert list(events) == ["ImagePreprocessor"]
    up, down = events["ImagePreprocessor"]
    assert (up["direction"], up["after_step_s"], up["step_rate"]) == ("up", 7.5, 4.0)
    assert (down["direction"], down["after_step_s"], down["step_rate"]) == ("down", 21.0, 0.0)


def test_profile_summary_groups_samples_by_role():
    from loadtest.profile import summarize

    raw = "\n".join([
        'process 11:"ray::ServeReplica:qvq:ImagePreprocessor";_decode (/x/serving/preprocess/'
        'decode.py:40);resize (/x/cv2/__init__.py:3) 30',
        'process 11:"ray::ServeReplica:qvq:ImagePreprocessor";run (/x/asyncio/base_events.py:1);'
        'select (/x/selectors.py:9) 10',
        'process 12:"VLLM::EngineCore";step (/x/vllm/engine.py:5) 60',
    ])
    out = summarize(raw)
    assert out["samples"] == 100
    pre = out["roles"]["preprocessor"]
    assert pre["share"] == 0.4 and pre["samples"] == 40
    assert pre["top_self"][0] == ["resize (__init__.py)", 30]
    assert pre["top_ours_inclusive"] == [["_decode (serving/preprocess/decode.py)", 30]]
    assert out["roles"]["vLLM engine"]["share"] == 0.6


def test_profile_recognises_our_frames_by_relative_path():
    from loadtest.profile import summarize

    raw = ('process 7:"ray::ServeReplica:qvq:Router";handle (serving/api/router.py:10);'
           'dumps (json/encoder.py:5) 3')
    out = summarize(raw)
    assert out["roles"]["router"]["top_ours_inclusive"] == [["handle (serving/api/router.py)", 3]]


def test_rounds_are_summarised_by_medians_and_ratios_use_them():
    rows = [{"server": server, "scenario": "text", "mode": "closed", "concurrency": 32,
             "round": r, "output_tok_per_s": tok, "errors": 0, "error_examples": []}
            for server, toks in (("ours", (90, 100, 500)), ("bare-vllm", (100, 200, 110)))
            for r, tok in enumerate(toks)]
    mids = {m["server"]: m for m in compare.medians(rows)}
    assert mids["ours"]["output_tok_per_s"] == 100 and mids["bare-vllm"]["output_tok_per_s"] == 110
    assert mids["ours"]["rounds"] == 3 and "round" not in mids["ours"]
    (ratio,) = compare.ratios(list(mids.values()))
    assert ratio["output_tok_per_s"] == round(100 / 110, 3)
