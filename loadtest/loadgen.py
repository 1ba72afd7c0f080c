"""Open- and closed-loop HTTP load with streaming, for the comparative benchmarks.

Every request streams (``stream_options.include_usage``), so each sample carries time to first
token as well as latency and output tokens. Open loop: Poisson arrivals at a fixed rate;
latency is measured from the *intended* send time, so a server that falls behind is charged
for the queue it causes (no coordinated omission). ``max_in_flight`` bounds the client, and
the time an arrival waited for a free slot is recorded as ``client_wait_s``.

Both loops take the request function: ``stream_request`` (the default) or ``plain_request``
(one JSON answer, lighter on a client that must offer many requests a second). Each sample
records when its request was fully written to the socket (``sent_at``), so a report can show
the rate the server was actually offered, not just the rate the client intended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Sample:
    ok: bool
    latency_s: float
    ttft_s: float | None
    output_tokens: int
    client_wait_s: float = 0.0
    error: str | None = None
    status: int = 0  # HTTP status; 0 when no answer came (timeout, connection error)
    retry_after: str | None = None
    sent_at: float | None = None  # perf_counter when the request's last byte was written
    connect_s: float | None = None  # opening a new TCP connection, if one was opened
    started_at: float = 0.0  # perf_counter of the intended start (set by the loops)
    chunk_gaps_s: list[float] = field(default_factory=list)  # between text-carrying chunks
    headers_s: float | None = None  # request written -> response headers read
    tail_s: float | None = None  # the [DONE] event -> the end of the response

    @property
    def send_lag_s(self) -> float | None:
        """Intended start to request written: slot wait, connecting, the client's own lag."""
        return None if self.sent_at is None else self.sent_at - self.started_at

    @property
    def server_latency_s(self) -> float | None:
        """Request written to answer read: the server's share of ``latency_s``."""
        lag = self.send_lag_s
        return None if lag is None else self.latency_s - lag


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def errors(self) -> int:
        return sum(not s.ok for s in self.samples)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def encode(payloads: list[dict]) -> list[bytes]:
    """JSON bodies, made before any clock starts (the client shares the server's cores)."""
    out = []
    for p in payloads:
        body = dict(p, stream=True, stream_options={"include_usage": True})
        out.append(json.dumps(body).encode())
    return out


class _WireClock:
    """httpcore trace hook: when the request body was written to the socket, and how long
    opening a new connection took (none when a kept-alive one was reused)."""

    def __init__(self):
        self.sent_at: float | None = None
        self.connect_s: float | None = None
        self._connecting: float | None = None

    async def __call__(self, event: str, info: dict) -> None:
        if event == "http11.send_request_body.complete":
            self.sent_at = time.perf_counter()
        elif event == "connection.connect_tcp.started":
            self._connecting = time.perf_counter()
        elif event == "connection.connect_tcp.complete" and self._connecting is not None:
            self.connect_s = time.perf_counter() - self._connecting

    def fields(self) -> dict:
        return {"sent_at": self.sent_at, "connect_s": self.connect_s}


Send = Callable[[httpx.AsyncClient, bytes, float], Awaitable[Sample]]
# a chunk whose delta carries text: "content" or "reasoning_content" with a non-empty string
_HAS_TEXT = re.compile(r'"(?:reasoning_)?content": *"(?!")')
_MAX_POOLS = 16
_REQUESTS_PER_POOL = 64


async def stream_request(client: httpx.AsyncClient, body: bytes, started: float) -> Sample:
    """One streamed request; ``started`` is its intended start (perf_counter)."""
    ttft = None
    tokens = 0
    clock = _WireClock()
    gaps: list[float] = []
    last_text_at: float | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", content=body,
                                 headers={"Content-Type": "application/json"},
                                 extensions={"trace": clock}) as resp:
            headers_at = time.perf_counter()
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:200]
                return Sample(False, time.perf_counter() - started, None, 0,
                              error=f"HTTP {resp.status_code}: {text}",
                              status=resp.status_code,
                              retry_after=resp.headers.get("Retry-After"),
                              **clock.fields())
            done_at = None
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    done_at = time.perf_counter()
                    continue
                if not line.startswith("data: "):
                    continue
                # Only the rare chunks are parsed: the client shares the machine's cores with
                # the server, and a JSON parse per text chunk would make it a bottleneck.
                if _HAS_TEXT.search(line):
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = now - started
                    else:
                        gaps.append(now - last_text_at)
                    last_text_at = now
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Sample(False, time.perf_counter() - started, ttft, tokens,
                                  error=str(chunk["error"])[:200], status=200,
                                  **clock.fields())
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens", 0)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return Sample(False, time.perf_counter() - started, ttft, tokens,
                      error=f"{type(exc).__name__}: {exc}"[:200], **clock.fields())
    end = time.perf_counter()
    sent = clock.sent_at
    return Sample(True, end - started, ttft, tokens, status=200, chunk_gaps_s=gaps,
                  headers_s=None if sent is None else headers_at - sent,
                  tail_s=None if done_at is None else end - done_at, **clock.fields())


async def plain_request(client: httpx.AsyncClient, body: bytes, started: float) -> Sample:
    """One request answered with a single JSON body (no time to first token)."""
    clock = _WireClock()
    try:
        resp = await client.post("/v1/chat/completions", content=body,
                                 headers={"Content-Type": "application/json"},
                                 extensions={"trace": clock})
        latency = time.perf_counter() - started
        if resp.status_code != 200:
            return Sample(False, latency, None, 0,
                          error=f"HTTP {resp.status_code}: {resp.text[:200]}",
                          status=resp.status_code, retry_after=resp.headers.get("Retry-After"),
                          **clock.fields())
        tokens = (resp.json().get("usage") or {}).get("completion_tokens", 0)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return Sample(False, time.perf_counter() - started, None, 0,
                      error=f"{type(exc).__name__}: {exc}"[:200], **clock.fields())
    return Sample(True, latency, None, tokens, status=200, **clock.fields())


async def closed_loop(base: str, bodies: list[bytes], concurrency: int,
                      timeout_s: float = 900, send: Send = stream_request) -> LoadResult:
    """``concurrency`` workers; each sends the next body as soon as its last one finished."""
    result = LoadResult()
    queue = list(reversed(bodies))
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as client:
        async def worker():
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                sample = await send(client, body, started)
                sample.started_at = started
                result.samples.append(sample)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - t0
    return result


async def open_loop(base: str, bodies: list[bytes], rate_per_s: float, max_in_flight: int,
                    seed: int = 0, timeout_s: float = 900,
                    send: Send = stream_request) -> LoadResult:
    """Poisson arrivals at ``rate_per_s`` for ``len(bodies)`` requests."""
    result = LoadResult()
    rng = random.Random(seed)
    slots = asyncio.Semaphore(max_in_flight)
    # httpcore's pool scans its connections and waiting requests on every request and every
    # close, so one pool with a thousand requests in flight costs the client more CPU the
    # slower the server answers; a few pools keep that cost flat (round robin between them).
    pools = max(1, min(_MAX_POOLS, max_in_flight // _REQUESTS_PER_POOL))
    limits = httpx.Limits(max_connections=max_in_flight + 4,  # the slots bound the total
                          max_keepalive_connections=min(max_in_flight + 4, 256))
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits))
            for _ in range(pools)]

        async def one(body: bytes, intended: float, client: httpx.AsyncClient):
            async with slots:
                waited = time.perf_counter() - intended
                sample = await send(client, body, intended)
            sample.client_wait_s = max(waited, 0.0)
            sample.started_at = intended
            result.samples.append(sample)

        t0 = time.perf_counter()
        at = t0
        tasks = []
        for body in bodies:
            at += rng.expovariate(rate_per_s)
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, at, clients[len(tasks) % pools])))
        await asyncio.gather(*tasks)
        result.wall_s = time.perf_counter() - t0
    return result


def sent_per_s(samples: list[Sample]) -> float:
    """The rate requests actually reached the wire: count over the first-to-last send span."""
    times = sorted(s.sent_at for s in samples if s.sent_at is not None)
    if len(times) < 2 or times[-1] == times[0]:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


def _ms(values: list[float | None], q: float) -> float | None:
    known = [v for v in values if v is not None]
    return round(percentile(known, q) * 1000, 1) if known else None


def summarize(result: LoadResult) -> dict:
    ok = result.ok
    lat = [s.latency_s for s in ok]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    tokens = sum(s.output_tokens for s in ok)
    gaps = [g for s in ok for g in s.chunk_gaps_s]
    wall = result.wall_s or float("nan")
    return {
        "requests": len(result.samples), "errors": result.errors,
        "error_examples": sorted({s.error for s in result.samples if s.error})[:3],
        "wall_s": round(wall, 3),
        "req_per_s": round(len(ok) / wall, 3),
        "output_tok_per_s": round(tokens / wall, 2),
        "latency_p50_ms": round(percentile(lat, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "ttft_p50_ms": round(percentile(ttft, 0.5) * 1000, 1),
        "ttft_p99_ms": round(percentile(ttft, 0.99) * 1000, 1),
        "output_tokens": tokens,
        "chunk_gap_p50_ms": round(percentile(gaps, 0.5) * 1000, 2),
        "chunk_gap_p99_ms": round(percentile(gaps, 0.99) * 1000, 1),
        "chunk_gap_max_ms": round(max(gaps) * 1000, 1) if gaps else float("nan"),
        "tokens_per_chunk": round(tokens / (len(gaps) + len(ttft)), 2) if gaps else None,
        # the server's response time outside generation: to its headers, and from its last
        # event to the end of the response
        "headers_p50_ms": _ms([s.headers_s for s in ok], 0.5),
        "headers_p90_ms": _ms([s.headers_s for s in ok], 0.9),
        "tail_p90_ms": _ms([s.tail_s for s in ok], 0.9),
        "client_wait_p99_ms": round(percentile([s.client_wait_s for s in result.samples],
                                               0.99) * 1000, 1),
        "latencies_ms": [round(x * 1000, 1) for x in sorted(lat)],
    }
