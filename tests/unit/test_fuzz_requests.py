"""Property tests (hypothesis) of everything that parses client input before any hop.

Bodies come in three shapes: arbitrary JSON values, plausible chat bodies with fields mutated,
and raw bytes. Whatever arrives, parsing returns a model or raises the 400 the error handler
maps, with a short JSON error body and no internals; what is accepted round-trips and can be
handed on (images stripped and counted, the seed fits vLLM's sampler). Example counts come from
the settings profile (tests/hypothesis_profiles.py).
"""

from __future__ import annotations

import ipaddress
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.api.chat import parse_chat_request
from serving.api.errors import validation_to_error
from serving.batch.validate import MAX_REPORTED_ERRORS, parse_batch_input
from serving.errors import InvalidRequestError, QVQError
from serving.preprocess.sources import parse_image_sources
from serving.preprocess.ssrf import blocked_reason, parse_host_address
from serving.protocol import BatchCreateRequest, ChatCompletionRequest

MAX_ERROR_BODY = 4000
INT64 = (-(2**63), 2**63 - 1)
pytestmark = pytest.mark.timeout(60 + settings().max_examples // 10)  # scales with the profile

# --------------------------------------------------------------------------- strategies

HUGE_INTS = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
                             -(10**30), 10**400])
NUMBERS = st.integers() | HUGE_INTS | st.floats(allow_nan=True, allow_infinity=True)
# Lone surrogates: JSON may spell them ("\\ud800") but they are not text and cannot be UTF-8.
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                     max_size=2)
TEXT = st.text(max_size=40) | st.text(alphabet=string.printable, max_size=6000) \
    | st.builds(str.__add__, st.text(max_size=4), SURROGATES)
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


SCHEMES = ["data:image/png;base64,", "data:text/plain,", "data:,", "data:image/png;base64",
           "http://", "https://", "HTTPS://", "s3://", "s3://qvq-sources/", "qvq-image://",
           "qvq-image://img-", "file:///", "ftp://", "gopher://", "javascript:", "image:", ""]
URLS = st.builds(lambda scheme, rest: scheme + rest, st.sampled_from(SCHEMES),
                 st.text(max_size=80) | st.sampled_from(["0" * 64, "a" * 64, "qvq-sources/k",
                                                         "127.0.0.1/x.png", "[::1]/a", "iVBOR"]))
HUGE_URLS = st.builds(lambda prefix, filler, tail: prefix + filler + tail,
                      st.sampled_from(["s3://", "", "qvq-image://", "data:image/png;base64,",
                                       "https://"]),
                      st.sampled_from(["b" * 6000, "\u00e9" * 3000]),
                      st.sampled_from([":/k", "/k", ""]))


def edged(valid: st.SearchStrategy, edge: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid value, sometimes an edge case (out of range, wrong type) in its place."""
    return st.one_of(valid, valid, valid, valid, valid, edge)


LONG = st.sampled_from(["x" * 5000, "\u00e9" * 3000, "\U0001f600" * 2000])
DETAIL = edged(st.sampled_from(["auto", "low", "high"]), st.sampled_from(["HIGH", "", None]))
TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
IMAGE_PART = st.fixed_dictionaries({"type": st.just("image_url"), "image_url": URLS | st.builds(
    lambda url, detail: {"url": url} if detail is None else {"url": url, "detail": detail},
    URLS, DETAIL)})
OTHER_PART = st.fixed_dictionaries({"type": st.sampled_from(["input_audio", "image", "file",
                                                             "refusal", ""]) | TEXT | LONG},
                                   optional={"input_audio": JSON, "image_url": JSON})
CONTENT = TEXT | st.lists(st.one_of(TEXT_PART, IMAGE_PART), min_size=1, max_size=5)
OTHER_ROLE = st.sampled_from(["tool", "developer", "function", "USER", ""]) | TEXT | LONG
OPTIONAL_NAME = {"name": TEXT}
SYSTEM = st.fixed_dictionaries({"role": st.just("system"), "content": TEXT | st.lists(
    TEXT_PART, min_size=1, max_size=2)}, optional=OPTIONAL_NAME)
USER = st.fixed_dictionaries({"role": st.just("user"), "content": CONTENT},
                             optional=OPTIONAL_NAME)
ASSISTANT = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.none() | TEXT | st.lists(TEXT_PART, max_size=2)},
    optional={**OPTIONAL_NAME, "refusal": TEXT, "reasoning_content": TEXT})
MESSAGES = st.builds(lambda head, turns, last: head + [m for pair in turns for m in pair] + [last],
                     st.lists(SYSTEM, max_size=1), st.lists(st.tuples(USER, ASSISTANT), max_size=2),
                     USER)
POSITIVE = st.integers(1, 10**6)
BAD_COUNT = st.sampled_from([0, -1, 1.5, "12", True]) | HUGE_INTS
FIELD_VALUES = {  # field: (valid values, edge cases)
    "max_tokens": (POSITIVE, BAD_COUNT),
    "max_completion_tokens": (POSITIVE, BAD_COUNT),
    "temperature": (st.floats(0, 2), st.floats(-3, 0, exclude_max=True) | NUMBERS),
    "top_p": (st.floats(0, 1, exclude_min=True), st.floats(-1, 2) | NUMBERS),
    "stop": (st.none() | st.text(min_size=1) | st.lists(st.text(min_size=1), max_size=4),
             st.lists(TEXT, max_size=6) | LONG),
    "seed": (st.integers(*INT64), HUGE_INTS | st.integers()),
    "stream": (st.booleans(), st.sampled_from(["true", 1, None])),
    "stream_options": (st.none() | st.fixed_dictionaries(
        {}, optional={"include_usage": st.booleans()}), JSON),
    "n": (st.just(1), st.integers(-2, 3)),
    "presence_penalty": (st.floats(-2, 2), NUMBERS),
    "frequency_penalty": (st.floats(-2, 2), NUMBERS),
    "user": (TEXT, JSON),
    "split_reasoning": (st.booleans() | st.none(), JSON),
    "loop_guard": (st.sampled_from(["off", "detect", "stop", None]),
                   st.sampled_from(["STOP", "on", ""]) | LONG),
    "max_reasoning_tokens": (POSITIVE | st.none(), BAD_COUNT),
    "include_language_stats": (st.booleans() | st.none(), JSON),
    "logit_bias": (st.none() | st.dictionaries(st.integers(0, 600).map(str), st.floats(-100, 100),
                                               max_size=4),
                   st.dictionaries(TEXT, NUMBERS, max_size=3) | JSON),
    "min_tokens": (st.integers(0, 4), BAD_COUNT | st.integers(-3, 10**7)),
    "ignore_eos": (st.booleans(), JSON),
}
FIELDS = {name: edged(valid, edge) for name, (valid, edge) in FIELD_VALUES.items()}
UNKNOWN_KEYS = st.sampled_from(["tools", "logprobs", "tempreature", "response_format"]) | TEXT \
    | LONG
MODELS = edged(st.sampled_from(["qvq", "Qwen/QVQ-72B-Preview"]) | TEXT, JSON | LONG)


def _slots(value: object, out: list) -> list:
    """Every (container, key) in a JSON value, for mutation."""
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, child in items:
        out.append((value, key))
        _slots(child, out)
    return out


MUTATIONS = ("replace", "delete", "unknown_key", "wrong_part", "wrong_role")


@st.composite
def chat_bodies(draw) -> dict:
    """A valid chat body with edge-case field values, then up to three structural mutations:
    a value replaced by any JSON value, a key or item deleted, an unknown key added, a content
    part or role the server does not support."""
    body = draw(st.fixed_dictionaries({"model": MODELS, "messages": MESSAGES}, optional=FIELDS))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        messages = body.get("messages")
        if kind == "wrong_part" and isinstance(messages, list) and messages:
            msg = draw(st.sampled_from(messages))
            if isinstance(msg, dict):
                part = draw(OTHER_PART | IMAGE_PART | JSON)
                msg["content"] = (msg["content"] if isinstance(msg.get("content"), list)
                                  else []) + [part]
            continue
        if kind == "wrong_role" and isinstance(messages, list) and messages:
            msg = draw(st.sampled_from(messages))
            if isinstance(msg, dict):
                msg["role"] = draw(OTHER_ROLE | st.sampled_from(["system", "user", "assistant"]))
            continue
        slots = _slots(body, [])
        containers = [body] + [c[k] for c, k in slots if isinstance(c[k], dict | list)]
        if kind == "unknown_key":
            target = draw(st.sampled_from(containers))
            if isinstance(target, dict):
                target[draw(UNKNOWN_KEYS)] = draw(JSON)
            continue
        if not slots:
            continue
        container, key = draw(st.sampled_from(slots))
        if kind == "delete":
            del container[key]
        else:
            container[key] = draw(JSON)
    return body


def dumps(value, ascii_only: bool) -> bytes:
    """JSON bytes; lone surrogates become \\udXXX escapes, or invalid UTF-8 when not ASCII."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- checks


def check_error_body(exc: QVQError) -> None:
    """What the client would receive: JSON, typed, a message to act on, short, no internals."""
    body = exc.to_openai()
    text = json.dumps(body, ensure_ascii=False, allow_nan=False)  # as JSONResponse renders it
    assert len(text) < MAX_ERROR_BODY, text[:300]
    assert body["error"]["type"] and isinstance(body["error"]["type"], str)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip()
    assert "Traceback" not in text and 'File "' not in text


def image_parts(raw: dict) -> int:
    return sum(1 for msg in raw["messages"] if msg["role"] == "user"
               and isinstance(msg["content"], list)
               for part in msg["content"] if part["type"] == "image_url")


def check_chat(body: bytes, raw: object = None) -> ChatCompletionRequest | None:
    try:
        req = parse_chat_request(body)
    except InvalidRequestError as exc:
        assert type(exc) is InvalidRequestError
        assert exc.status_code == 400
        check_error_body(exc)
        return None
    assert parse_chat_request(req.model_dump_json().encode()) == req
    assert req.seed is None or INT64[0] <= req.seed <= INT64[1]  # vLLM seeds torch generators
    stripped = req.without_image_data()
    assert len(stripped.messages) == len(req.messages)
    assert stripped.image_urls() == [f"image:{i}" for i in range(len(req.image_urls()))]
    if isinstance(raw, dict):
        assert len(req.image_urls()) == image_parts(raw)
    return req


# --------------------------------------------------------------------------- chat bodies


@given(JSON, st.booleans())
def test_any_json_value_is_a_model_or_a_400(value, ascii_only):
    check_chat(dumps(value, ascii_only), value)


@given(chat_bodies(), st.booleans())
def test_mutated_chat_bodies_are_a_model_or_a_400(body, ascii_only):
    check_chat(dumps(body, ascii_only), body)


@given(st.sampled_from(sorted(FIELD_VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), FIELD_VALUES[name][1] | FIELD_VALUES[name][0])),
    st.booleans())
def test_each_field_at_its_edges_is_a_model_or_a_400(field_value, stream):
    """One field at a time on a valid body, so no other problem masks its check."""
    name, value = field_value
    body = {"model": "qvq", "messages": [{"role": "user", "content": "hi"}], name: value}
    if name == "stream_options":
        body["stream"] = stream
    check_chat(dumps(body, False), body)


@given(st.binary(max_size=300) | st.builds(lambda a, b: a + b, st.sampled_from(
    [b"{", b'{"model": "m", "messages": [', b"\xef\xbb\xbf{}", b"[" * 300, b'"\\ud800"',
     b'{"model": "\\udfff", "messages": [{"role": "user", "content": "\\ud83d"}]}']),
    st.binary(max_size=40)))
def test_any_bytes_are_a_model_or_a_400(body):
    check_chat(body)


@given(chat_bodies())
def test_batch_lines_accept_exactly_the_bodies_the_live_endpoint_accepts(body):
    """Batch input is checked line by line before anything runs: a body the live endpoint
    rejects must not pass there and fail later at run time."""
    live = check_chat(dumps(body, True), body)
    lines, errors = parse_batch_input(batch_line("c", body).encode(), max_lines=1,
                                      max_bytes=10**7, model_ids={"qvq"})
    assert len(lines) + len(errors) == 1
    runnable = live is not None and not live.stream and live.model == "qvq"
    assert bool(lines) == runnable, errors
    if lines:
        assert lines[0].body == live


def test_accepted_request_round_trips_with_every_field():
    body = {"model": "qvq", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "s"}]},
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "image_url", "image_url": "https://x/y.png"},
                                     {"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AA",
                                                    "detail": "low"}}]},
        {"role": "assistant", "content": None, "reasoning_content": "r"},
        {"role": "user", "content": "b"}],
        "max_tokens": 5, "temperature": 0.0, "top_p": 1, "stop": "x", "seed": 2**63 - 1,
        "stream": True, "stream_options": {"include_usage": True}, "split_reasoning": True,
        "loop_guard": "stop", "max_reasoning_tokens": 10**6, "include_language_stats": False}
    assert check_chat(dumps(body, False), body) is not None


# --------------------------------------------------------------------------- batch create


BATCH_CREATE = st.fixed_dictionaries(
    {"input_file_id": edged(TEXT, JSON), "endpoint": edged(st.just("/v1/chat/completions"), JSON),
     "completion_window": edged(st.just("24h"), JSON)},
    optional={"metadata": edged(st.none() | st.dictionaries(
        st.text(max_size=70), st.text(max_size=520), max_size=18), JSON)})


@given(BATCH_CREATE | JSON)
def test_batch_create_is_a_model_or_a_400(value):
    try:
        req = BatchCreateRequest.model_validate_json(dumps(value, False))
    except ValidationError as exc:
        err = validation_to_error(exc)
        assert type(err) is InvalidRequestError
        check_error_body(err)
        return
    assert BatchCreateRequest.model_validate_json(req.model_dump_json()) == req
    assert req.metadata is None or len(req.metadata) <= 16


# --------------------------------------------------------------------------- batch input files


def batch_line(custom_id: str, body: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": body})


VALID_BODY = {"model": "qvq", "messages": [{"role": "user", "content": "hi"}]}
CUSTOM_IDS = st.sampled_from(["a", "b", "req-1", "", "x" * 513]) | st.text(max_size=8)
LINE_KINDS = st.one_of(
    st.tuples(st.just("valid"), st.builds(lambda n: batch_line(f"fresh-{n}", VALID_BODY),
                                          st.integers(0, 10**6))),
    st.tuples(st.just("reused"), st.builds(batch_line, CUSTOM_IDS,
                                               st.just(VALID_BODY) | chat_bodies())),
    st.tuples(st.just("broken"), st.builds(lambda s, cut: s[:cut], st.builds(
        batch_line, CUSTOM_IDS, st.just(VALID_BODY)), st.integers(0, 80))),
    st.tuples(st.just("json"), st.builds(json.dumps, JSON)),
    st.tuples(st.just("object"), st.builds(json.dumps, st.dictionaries(
        st.sampled_from(["custom_id", "method", "url", "body", "extra"]), JSON | st.sampled_from(
            ["POST", "/v1/chat/completions", "a"]), max_size=5))),
    st.tuples(st.just("text"), st.text(st.characters(codec="utf-8", exclude_characters="\n"),
                                       max_size=60)),
)


@st.composite
def batch_files(draw) -> tuple[bytes, list[tuple[str, bytes]]]:
    lines = draw(st.lists(LINE_KINDS, max_size=12))
    encoded = [(kind, text.encode("utf-8")) for kind, text in lines]
    if draw(st.booleans()):  # bytes that are not UTF-8 somewhere in the file
        at = draw(st.integers(0, len(encoded)))
        encoded.insert(at, ("bytes", draw(st.binary(min_size=1, max_size=30).filter(
            lambda b: b"\n" not in b))))
    data = b"\n".join(raw for _, raw in encoded) + draw(st.sampled_from([b"", b"\n", b"\n\n"]))
    return data, encoded


@given(batch_files(), st.integers(1, 20), st.sampled_from([100, 10**6]))
def test_batch_input_never_raises_and_counts_lines(file, max_lines, max_bytes):
    data, encoded = file
    lines, errors = parse_batch_input(data, max_lines=max_lines, max_bytes=max_bytes,
                                      model_ids={"qvq"})
    n_lines = data.count(b"\n") + 1
    assert len(lines) + len(errors) <= n_lines
    assert len(errors) <= MAX_REPORTED_ERRORS
    for err in errors:
        assert err.line is None or 1 <= err.line <= n_lines
        assert err.message and json.dumps(err.to_dict())
    if any(err.line is None for err in errors):
        assert not lines and len(errors) == 1
    numbers = [x.line for x in lines] + [e.line for e in errors if e.line is not None]
    assert len(set(numbers)) == len(numbers)
    assert len({x.custom_id for x in lines}) == len(lines)
    for line in lines:
        assert json.loads(line.raw)["custom_id"] == line.custom_id
        assert line.raw.encode() == encoded[line.line - 1][1]
    if not errors:  # every line given as valid with a fresh id came back under that id
        fresh = {json.loads(raw)["custom_id"] for kind, raw in encoded if kind == "valid"}
        assert fresh <= {x.custom_id for x in lines}


@given(st.binary(max_size=400), st.integers(1, 5))
def test_batch_input_of_random_bytes_never_raises(data, max_lines):
    lines, errors = parse_batch_input(data, max_lines=max_lines, max_bytes=10**6,
                                      model_ids={"qvq"})
    assert len(lines) + len(errors) <= data.count(b"\n") + 1
    assert all(e.line is None or 1 <= e.line <= data.count(b"\n") + 1 for e in errors)


# --------------------------------------------------------------------------- image URLs


@given(st.lists(URLS | HUGE_URLS | st.text(max_size=60), max_size=10), st.integers(0, 8),
       st.lists(st.sampled_from(["qvq-sources", "b", ""]) | st.text(max_size=8), max_size=3))
def test_image_sources_raise_only_qvq_errors(urls, max_images, buckets):
    try:
        out = parse_image_sources(urls, max_images=max_images, allowed_buckets=buckets)
    except QVQError as exc:
        assert isinstance(exc, InvalidRequestError) and exc.status_code == 400
        check_error_body(exc)
        return
    assert [source.url for source in out] == urls and len(out) <= max_images


# --------------------------------------------------------------------------- SSRF classifier

HOST_CHARS = st.sampled_from(list("0123456789abcdefxABCDEFX.:[]%_-+ ")) | st.characters()


@given(st.text(HOST_CHARS, max_size=50) | st.text(max_size=50))
def test_parse_host_address_returns_an_address_or_none(host):
    addr = parse_host_address(host)
    assert addr is None or isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address)
    if addr is not None:
        reason = blocked_reason(addr)
        assert reason is None or (isinstance(reason, str) and reason)


@given(st.ip_addresses())
def test_blocked_reason_for_any_address(addr):
    reason = blocked_reason(addr)
    assert reason is None or (isinstance(reason, str) and reason)
    assert parse_host_address(str(addr)) == addr
    if addr.version == 6:
        assert parse_host_address(f"[{addr}]") == addr
    else:  # the spellings inet_aton accepts name the same address, so they are blocked alike
        number = int(addr)
        for spelling in (str(number), hex(number), f"0{number:o}" if number else "0"):
            assert parse_host_address(spelling) == addr
        mapped = ipaddress.IPv6Address(f"::ffff:{addr}")
        assert (blocked_reason(mapped) is None) == (reason is None)
    assert blocked_reason(addr, [ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")]) is None


@given(st.ip_addresses(v=4), st.integers(1, 32))
def test_allowed_network_exempts_exactly_its_members(addr, prefix):
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    outside = ipaddress.IPv4Address((int(net.broadcast_address) + 1) % 2**32)
    assert blocked_reason(addr, [net]) is None
    assert blocked_reason(outside, [net]) == blocked_reason(outside)
