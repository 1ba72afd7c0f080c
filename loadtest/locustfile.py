"""Locust scenarios an operator recognises, each under its own name in the CSV/HTML report.

    locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 60s --host http://127.0.0.1:8000 \
        --csv loadtest/results/locust --html loadtest/results/locust.html

Each user sends back to back (closed loop), so ``-u`` is the concurrency; add ``--stop-timeout 120``
to let batches still running at ``-t`` finish and report (the HTML has them; Locust writes the CSV
once a second, so its last second can be missing). Scenarios (report names):

    text      "chat text"             text-only chat, not streamed
    photo     "chat photo"            one fresh photo (data URL) + a question
    photos    "chat 3 photos"         QVQ_PHOTOS_PER_REQUEST fresh photos in one message
    stream    "chat stream"           one fresh photo, streamed; the row times the whole stream,
              "TTFT stream"           ms to the first content/reasoning delta,
              "TPOT stream"           ms per output token after the first (usage chunk's count)
    repeated  "photo repeated (hit)"  one of 3 fixed photos, so the preprocessed-image cache
              "photo repeated (miss)" answers; split by the x-qvq-image-cache header
    batch     "batch upload/create/poll", "batch end-to-end": a small JSONL batch from upload
                                      to a terminal status (failure unless completed, no errors)

"Fresh" photos carry a unique JPEG comment / PNG tEXt chunk: new bytes (a cache miss) with the
same pixels, without re-encoding per request. Environment (all optional):

    QVQ_API_KEY            Bearer key sent with every request (none: no Authorization header)
    QVQ_MODEL              model name in requests (qvq-72b-preview)
    QVQ_IMAGE_SIZES        generated photo sizes, drawn at random (1024x1024,2048x1536,4000x3000);
                           generated once, cached in .qvq/loadtest-photos, encoded at test_start
    QVQ_IMAGE_DIR          directory of real .jpg/.jpeg/.png files to use instead of generated ones
    QVQ_MAX_TOKENS         max_tokens of every chat request (32)
    QVQ_PHOTOS_PER_REQUEST photos in one "photos" message (3)
    QVQ_SCENARIO_WEIGHTS   e.g. text=4,photo=3,photos=1,stream=3,repeated=2,batch=1 (the
                           defaults); names left out keep their default, 0 disables
    QVQ_BATCH_LINES        chat lines per batch; every second one carries a photo (4)
    QVQ_BATCH_TIMEOUT_S    give up polling a batch after this long, as a failure (600)
"""

from __future__ import annotations

import base64
import functools
import json
import os
import pathlib
import random
import secrets
import time
import zlib

import gevent
from locust import FastHttpUser, constant, events

from loadtest.photos import photo_jpeg
from serving.batch.record import TERMINAL

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
MODEL = os.environ.get("QVQ_MODEL", "qvq-72b-preview")
API_KEY = os.environ.get("QVQ_API_KEY", "")
MAX_TOKENS = int(os.environ.get("QVQ_MAX_TOKENS", "32"))
PHOTOS_PER_REQUEST = int(os.environ.get("QVQ_PHOTOS_PER_REQUEST", "3"))
BATCH_LINES = int(os.environ.get("QVQ_BATCH_LINES", "4"))
BATCH_TIMEOUT_S = float(os.environ.get("QVQ_BATCH_TIMEOUT_S", "600"))
DEFAULT_WEIGHTS = {"text": 4, "photo": 3, "photos": 1, "stream": 3, "repeated": 2, "batch": 1}
REPEATED_POOL = 3
PROMPTS = ["What is in this image? Think step by step.", "How many objects are there?",
           "Describe the colours and what they suggest.", "Is anything unusual here?"]
TALLY = {"hit": 0, "miss": 0, "streams": 0, "tokens": 0}


class Photo:
    """One image, base64-encoded once; ``fresh_url`` inserts a unique comment after the header.
    The header plus the comment are 24 (JPEG) or 63 (PNG) bytes, a multiple of 3, so the
    base64 of the rest is computed once and appended as is."""

    def __init__(self, data: bytes, png: bool):
        self.mime, self.png = ("image/png" if png else "image/jpeg"), png
        self.url = f"data:{self.mime};base64,{base64.b64encode(data).decode()}"
        cut = 33 if png else 2  # PNG signature + IHDR chunk; JPEG SOI marker
        self.head, self.tail = data[:cut], base64.b64encode(data[cut:]).decode()

    def fresh_url(self) -> str:
        tag = b"qvq\0" + secrets.token_hex(7).encode()  # 18 bytes
        if self.png:
            extra = (len(tag).to_bytes(4, "big") + b"tEXt" + tag
                     + zlib.crc32(b"tEXt" + tag).to_bytes(4, "big"))
        else:
            extra = b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag
        head = base64.b64encode(self.head + extra).decode()
        return f"data:{self.mime};base64,{head}{self.tail}"


@functools.cache
def photos() -> list[Photo]:
    folder = os.environ.get("QVQ_IMAGE_DIR")
    if folder:
        files = sorted(p for p in pathlib.Path(folder).iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise RuntimeError(f"QVQ_IMAGE_DIR={folder} holds no .jpg/.jpeg/.png files")
        return [Photo(p.read_bytes(), p.suffix.lower() == ".png") for p in files]
    spec = os.environ.get("QVQ_IMAGE_SIZES", "1024x1024,2048x1536,4000x3000")
    sizes = [tuple(int(n) for n in s.strip().lower().split("x")) for s in spec.split(",") if s]
    cache = ROOT / ".qvq" / "loadtest-photos"
    per_size = max(PHOTOS_PER_REQUEST, REPEATED_POOL)
    return [Photo(photo_jpeg(w, h, seed, cache_dir=cache), png=False)
            for seed in range(per_size) for (w, h) in sizes]


def scenario_weights() -> dict[str, int]:
    weights = dict(DEFAULT_WEIGHTS)
    for item in os.environ.get("QVQ_SCENARIO_WEIGHTS", "").replace(" ", "").split(","):
        if item:
            name, _, value = item.partition("=")
            if name not in weights or not value.isdigit():
                raise ValueError(f"QVQ_SCENARIO_WEIGHTS: bad item {item!r}; use name=weight "
                                 f"with names {', '.join(weights)}")
            weights[name] = int(value)
    if not any(weights.values()):
        raise ValueError("QVQ_SCENARIO_WEIGHTS disables every scenario")
    return weights


def error_text(resp) -> str:
    """The OpenAI-style error message of a failed response, else its status and first bytes."""
    if not resp.status_code:
        return f"no response: {getattr(resp, 'error', None)!r}"
    try:
        error = json.loads(resp.content)["error"]
        return f"{resp.status_code} {error.get('code') or error.get('type')}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {(resp.content or b'')[:200]!r}"


def expect(resp, field: str) -> dict | None:
    """Mark ``resp`` (a catch_response context) ok if it is a 200 whose JSON has ``field``."""
    if resp.status_code != 200:
        resp.failure(error_text(resp))
        return None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or field not in body:
        resp.failure(f"response body has no {field!r}")
        return None
    resp.success()
    return body


def metric(user, kind: str, name: str, ms: float, error: str | None = None) -> None:
    user.environment.events.request.fire(
        request_type=kind, name=name, response_time=ms, response_length=0, context={},
        exception=RuntimeError(error) if error else None)


def message(*images: str, text: str | None = None) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return {"role": "user", "content": [*parts, {"type": "text",
                                                 "text": text or random.choice(PROMPTS)}]}


def body(msg: dict, **extra) -> dict:
    return {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [msg], **extra}


def chat(user, name: str, msg: dict, name_of=None) -> None:
    with user.client.post(CHAT, json=body(msg), name=name, catch_response=True) as resp:
        if name_of is not None and resp.status_code == 200:
            resp.request_meta["name"] = name_of(resp.headers.get("x-qvq-image-cache", ""))
        expect(resp, "choices")


def text(user):
    chat(user, "chat text", message(text="Explain step by step why the sky is blue."))


def photo(user):
    chat(user, "chat photo", message(random.choice(photos()).fresh_url()))


def several(user):
    urls = [p.fresh_url() for p in random.choices(photos(), k=PHOTOS_PER_REQUEST)]
    chat(user, f"chat {PHOTOS_PER_REQUEST} photos", message(*urls))


def repeated(user):
    def name_of(cache: str) -> str:
        hit = bool(cache) and "miss" not in cache.split(",")
        TALLY["hit" if hit else "miss"] += 1
        return f"photo repeated ({'hit' if hit else 'miss'})"
    chat(user, "photo repeated", message(random.choice(photos()[:REPEATED_POOL]).url), name_of)


def stream(user):
    payload = body(message(random.choice(photos()).fresh_url()), stream=True,
                   stream_options={"include_usage": True})
    start, ttft, tokens, done, problem, size = time.perf_counter(), None, None, False, None, 0
    with user.client.post(CHAT, json=payload, name="chat stream", stream=True,
                          catch_response=True, headers={"Accept-Encoding": "identity"}) as resp:
        if resp.status_code != 200:
            resp.failure(error_text(resp))
            return
        try:  # readline returns each line as it arrives (iter_content(n) waits for n bytes);
            # read to the end of the body, so the connection goes back to the pool
            while line := resp._response.readline(b"\n"):
                size += len(line)
                data = line[5:].strip() if line.startswith(b"data:") else b""
                if not data or (done := done or data == b"[DONE]"):
                    continue
                event = json.loads(data)
                if "error" in event:
                    problem = problem or f"stream error: {event['error'].get('message')}"
                deltas = [c.get("delta") or {} for c in event.get("choices") or []]
                if ttft is None and any(d.get("content") or d.get("reasoning_content")
                                        for d in deltas):
                    ttft = (time.perf_counter() - start) * 1000
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        except Exception as exc:  # noqa: BLE001 - a broken stream is this request's failure
            problem = f"stream broke: {exc!r}"
        total = (time.perf_counter() - start) * 1000
        resp.request_meta.update(response_time=total, response_length=size)
        problem = problem or (None if done else "stream ended before [DONE]") or (
            None if tokens is not None else "stream had no usage chunk")
        if problem:
            resp.failure(problem)
        else:
            resp.success()
    if ttft is not None:
        metric(user, "SSE", "TTFT stream", ttft)
        if tokens and tokens > 1:
            metric(user, "SSE", "TPOT stream", (total - ttft) / (tokens - 1))
    if not problem:
        TALLY["streams"], TALLY["tokens"] = TALLY["streams"] + 1, TALLY["tokens"] + (tokens or 0)


def batch(user):
    start, pool = time.perf_counter(), photos()
    lines = [{"custom_id": f"locust-{i}", "method": "POST", "url": CHAT,
              "body": body(message(pool[i % len(pool)].fresh_url()) if i % 2
                           else message(text=f"Count to {i + 3}."))} for i in range(BATCH_LINES)]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    boundary = secrets.token_hex(16)
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="locust.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n').encode()
    with user.client.post("/v1/files", data=form + jsonl + f"\r\n--{boundary}--\r\n".encode(),
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                          name="batch upload", catch_response=True) as resp:
        uploaded = expect(resp, "id")
    if uploaded is None:
        return
    create = {"input_file_id": uploaded["id"], "endpoint": CHAT, "completion_window": "24h",
              "metadata": {"source": "locust"}}
    with user.client.post("/v1/batches", json=create, name="batch create",
                          catch_response=True) as resp:
        job = expect(resp, "id")
    while job is not None and job["status"] not in TERMINAL:
        if time.perf_counter() - start > BATCH_TIMEOUT_S:
            metric(user, "BATCH", "batch end-to-end", (time.perf_counter() - start) * 1000,
                   f"batch still {job['status']} after {BATCH_TIMEOUT_S:g} s")
            return
        gevent.sleep(1.0)
        with user.client.get(f"/v1/batches/{job['id']}", name="batch poll",
                             catch_response=True) as resp:
            job = expect(resp, "status")
    if job is not None:
        counts = job.get("request_counts") or {}
        ok = job["status"] == "completed" and not counts.get("failed")
        metric(user, "BATCH", "batch end-to-end", (time.perf_counter() - start) * 1000,
               None if ok else f"batch {job['status']}, request_counts {counts}")


SCENARIOS = {"text": text, "photo": photo, "photos": several, "stream": stream,
             "repeated": repeated, "batch": batch}


class QVQUser(FastHttpUser):
    wait_time = constant(0)
    network_timeout = 300.0
    default_headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
    tasks = {SCENARIOS[name]: w for name, w in scenario_weights().items() if w}


@events.test_start.add_listener
def _prepare(**_):
    photos()  # generate and encode once, before users start timing requests


@events.test_stop.add_listener
def _summary(**_):
    if lookups := TALLY["hit"] + TALLY["miss"]:
        print(f"repeated photos: {TALLY['hit']}/{lookups} image-cache hits")
    if TALLY["streams"]:
        print(f"streams: {TALLY['streams']} ok, {TALLY['tokens']} output tokens")
