"""Per-key limits on a fake clock: continuous refill, all-or-nothing charging, leases, token
settlement, OpenAI-style headers and errors."""

from __future__ import annotations

import pytest

from serving.api.limits import LimitBook, format_reset
from serving.config import LimitsConfig
from serving.errors import RateLimitError


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def book(**limits):
    clock = Clock()
    config = LimitsConfig(default=limits, per_key={"big": {"requests_per_minute": 1000}})
    return LimitBook(config, lease_ttl_s=30, clock=clock), clock


def test_requests_per_minute_refill_continuously():
    limits, clock = book(requests_per_minute=6)
    for _ in range(6):
        limits.admit("a", tokens=1, images=0)
    with pytest.raises(RateLimitError) as exc:
        limits.admit("a", tokens=1, images=0)
    assert exc.value.status_code == 429 and exc.value.code == "rate_limit_exceeded"
    assert exc.value.error_type == "requests"
    assert exc.value.retry_after_s == pytest.approx(10.0)  # one request refills in 60/6 s
    assert exc.value.response_headers() == {"Retry-After": "10"}
    import pickle

    again = pickle.loads(pickle.dumps(exc.value))  # crosses Ray from the limiter replica
    assert (again.limit, again.retry_after_s, again.to_openai()) == (
        "requests", exc.value.retry_after_s, exc.value.to_openai())
    clock.now += 10
    limits.admit("a", tokens=1, images=0)
    limits.admit("b", tokens=1, images=0)  # keys are independent
    for _ in range(50):
        limits.admit("big", tokens=1, images=0)  # its own entry replaces the default


def test_token_limit_is_all_or_nothing_and_settles_with_real_usage():
    limits, clock = book(requests_per_minute=100, tokens_per_minute=1000)
    first = limits.admit("a", tokens=800, images=0)
    with pytest.raises(RateLimitError) as exc:
        limits.admit("a", tokens=300, images=0)
    assert exc.value.error_type == "tokens" and "remaining 200" in exc.value.message
    assert exc.value.limit == "tokens"
    assert limits.headers("a")["x-ratelimit-remaining-requests"] == "99"  # not charged
    limits.finish(first.caller, first.lease, first.reserved_tokens, used_tokens=100)
    assert limits.headers("a")["x-ratelimit-remaining-tokens"] == "900"
    limits.admit("a", tokens=300, images=0)
    with pytest.raises(RateLimitError, match="Request too large.*limit 1000, requested 5000"):
        limits.admit("a", tokens=5000, images=0)


def test_images_per_minute():
    limits, _ = book(images_per_minute=4)
    limits.admit("a", tokens=1, images=3)
    with pytest.raises(RateLimitError, match="on images per minute"):
        limits.admit("a", tokens=1, images=2)
    limits.admit("a", tokens=1, images=1)
    limits.admit("a", tokens=1, images=0)  # text-only requests pass


def test_concurrency_leases_are_released_and_expire():
    limits, clock = book(concurrent_requests=2)
    one = limits.admit("a", tokens=1, images=0)
    limits.admit("a", tokens=1, images=0)
    with pytest.raises(RateLimitError, match="concurrent requests: limit 2, in flight 2"):
        limits.admit("a", tokens=1, images=0)
    limits.finish(one.caller, one.lease, 0, None)
    limits.admit("a", tokens=1, images=0)
    clock.now += 31  # a router that died never released: the lease expires
    assert limits.headers("a")["x-ratelimit-remaining-concurrent"] == "2"


def test_headers_follow_openai_names_and_formats():
    limits, clock = book(requests_per_minute=60, tokens_per_minute=6000)
    admitted = limits.admit(None, tokens=600, images=0)
    assert admitted.caller == "anonymous"
    assert admitted.headers == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5400", "x-ratelimit-reset-tokens": "6s"}
    assert [format_reset(s) for s in (0.02, 1, 59.2, 360)] == ["20ms", "1s", "1m0s", "6m0s"]


def test_no_limits_no_headers():
    limits, _ = book()
    assert limits.admit("a", tokens=10**9, images=100).headers == {}
    assert not LimitsConfig().any_limits


def test_limit_kinds_name_what_a_caller_can_be_refused_on():
    from serving.api.limits import limit_kinds
    from serving.config import KeyLimits

    assert limit_kinds(KeyLimits()) == []
    assert limit_kinds(KeyLimits(requests_per_minute=3, images_per_minute=2,
                                 concurrent_requests=1, max_active_batch_bytes=10)) \
        == ["requests", "images", "concurrency", "batches"]
    assert limit_kinds(KeyLimits(tokens_per_minute=9)) == ["tokens"]
