"""API fuzzing of every route in our OpenAPI document with schemathesis, against the real stack:
no 5xx, no answer slower than the timeout, no stack trace in any body, and the stack still
healthy afterwards (no replica crashed).

Bounded in CI (``QVQ_FUZZ_EXAMPLES``, default 15 per operation and generation mode); longer:

    QVQ_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/integration/test_fuzz_api.py -p no:randomly

Generated chat requests are capped at 8 completion tokens (the fuzzing is about the HTTP
surface, not about generating long answers on a CPU).
"""

from __future__ import annotations

import os
import re

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import API_KEY

EXAMPLES = int(os.environ.get("QVQ_FUZZ_EXAMPLES", "15"))
RESPONSE_LIMIT_S = 60
TRACE = re.compile(r"Traceback \(most recent call last\)|File \"/")

def _cap_generation(case) -> None:
    body = case.body
    if case.path == "/v1/chat/completions" and isinstance(body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(field), int) and body[field] > 8:
                body[field] = 8
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = 8


def _check(case, server, counts: dict[str, dict[int, int]]) -> None:
    _cap_generation(case)
    response = case.call(base_url=server["base"], timeout=RESPONSE_LIMIT_S,
                         headers={"Authorization": f"Bearer {API_KEY}"})
    codes = counts.setdefault(f"{case.method} {case.path}", {})
    codes[response.status_code] = codes.get(response.status_code, 0) + 1
    case.validate_response(response, checks=(not_a_server_error,))
    assert not TRACE.search(response.text[:20000]), response.text[:500]
    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        error = response.json().get("error", {})
        assert error.get("message") and error.get("type"), response.text[:300]


def test_no_server_errors_or_traces_anywhere_and_the_stack_survives(server):
    """Every operation of /openapi.json, valid and invalid inputs (schemathesis' positive and
    negative generation), through hypothesis; then the stack still answers /health."""
    schema = schemathesis.openapi.from_url(f"{server['base']}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/images",
                                              "/v1/files", "/v1/batches"}
    counts: dict[str, dict[int, int]] = {}
    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            _check(case, server, counts)

        fuzz()
    total = sum(sum(v.values()) for v in counts.values())
    print(f"\nfuzzed {total} requests: " + "; ".join(
        f"{op}: {dict(sorted(codes.items()))}" for op, codes in sorted(counts.items())))
    assert len(counts) == len(operations), "an operation was never called"
    assert httpx.get(f"{server['base']}/health", timeout=30).status_code == 200
