import asyncio
import ipaddress

import pytest

from serving.config import FetchConfig
from serving.errors import BlockedURLError, ImageError, ImageFetchError, PayloadTooLargeError
from serving.preprocess.sources import (
    SOURCE_TYPES,
    ImageFetcher,
    check_source,
    decode_data_url,
    parse_image_sources,
)
from tests.image_server import PNG, image_server
from tests.images import data_url


def test_data_url_roundtrip():
    assert decode_data_url(data_url(PNG), max_bytes=10**6) == PNG


@pytest.mark.parametrize("url,match", [
    ("data:image/png;base64", "no ','"),
    ("data:text/plain;base64,aGVsbG8=", "not an image type"),
    ("data:image/png;base64,@@@notbase64@@@", "not valid base64"),
    ("data:image/png;base64,", "image is empty"),
])
def test_bad_data_urls(url, match):
    with pytest.raises(ImageError, match=match):
        decode_data_url(url, max_bytes=10**6)


def test_data_url_over_limit_is_413_without_decoding():
    with pytest.raises(PayloadTooLargeError, match="limit"):
        decode_data_url(data_url(b"x" * 5000), max_bytes=2048)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x",
                                 "/relative.png", "qvq-images://x"])
def test_other_schemes_rejected(url):
    with pytest.raises(BlockedURLError, match="not supported"):
        check_source(url, allowed_buckets=[])


@pytest.mark.parametrize(("url", "kind", "parsed"), [
    ("data:image/png;base64,AA", "data", {}),
    ("HTTPS://example.com/cat.png", "http", {}),
    ("s3://qvq-sources/cats/1.png", "s3", {"bucket": "qvq-sources", "key": "cats/1.png"}),
    ("qvq-image://" + "ab" * 32, "ref", {"sha256": "ab" * 32}),
])
def test_each_source_type_checks_its_url_once_at_the_edge(url, kind, parsed):
    source = check_source(url, allowed_buckets=["qvq-sources"])
    assert source.kind == kind and source.url == url
    assert {k: getattr(source, k) for k in parsed} == parsed


@pytest.mark.parametrize(("url", "error", "match"), [
    ("s3://other/key.png", BlockedURLError, "not one this server"),
    ("s3://qvq-sources", ImageError, "s3://bucket/key"),
    ("qvq-image://nothex", ImageError, "64 hex"),
])
def test_source_checks_refuse_what_they_cannot_read(url, error, match):
    with pytest.raises(error, match=match):
        check_source(url, allowed_buckets=["qvq-sources"])


def test_one_source_type_per_scheme_and_kind():
    schemes = [scheme for t in SOURCE_TYPES for scheme in t.schemes]
    assert len(schemes) == len(set(schemes))
    assert len({t.kind for t in SOURCE_TYPES}) == len(SOURCE_TYPES)


@pytest.fixture(scope="module")
def local_server():
    with image_server() as url:
        yield url


def fetch(url, **cfg):
    async def run():
        config = FetchConfig(**{"allowed_cidrs": ["127.0.0.1/32"], "read_timeout_s": 1.0,
                                "total_timeout_s": 5.0, **cfg})
        fetcher = ImageFetcher(config, max_bytes=cfg.pop("max_bytes", 100_000))
        return await fetcher.fetch(url)
    return asyncio.run(run())


def test_fetch_from_allowed_local_server(local_server):
    assert fetch(f"{local_server}/img.png") == PNG


def test_redirect_followed_and_rechecked(local_server):
    assert fetch(f"{local_server}/redirect") == PNG
    with pytest.raises(BlockedURLError, match="loopback"):
        fetch(f"{local_server}/redirect-out")  # 127.0.0.2 is outside the allowlist
    with pytest.raises(ImageFetchError, match="redirected more than"):
        fetch(f"{local_server}/redirect-loop")


def test_http_error_status(local_server):
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetch(f"{local_server}/missing.png")


def test_byte_cap(local_server):
    with pytest.raises(PayloadTooLargeError):
        fetch(f"{local_server}/big.bin")


def test_read_timeout(local_server):
    with pytest.raises(ImageFetchError, match="timed out|longer than"):
        fetch(f"{local_server}/slow")


def test_loopback_blocked_without_allowlist(local_server):
    with pytest.raises(BlockedURLError, match="loopback"):
        fetch(f"{local_server}/img.png", allowed_cidrs=[])


def test_resolved_private_address_blocked_before_connecting():
    """A name that resolves to a private address is refused; the fake resolver means no DNS
    and the guard means no connection is attempted."""
    async def run():
        async def resolver(host, port):
            return [ipaddress.ip_address("10.0.0.7")]
        fetcher = ImageFetcher(FetchConfig(), max_bytes=1000, resolver=resolver)
        await fetcher.fetch("https://images.example.test/cat.png")
    with pytest.raises(BlockedURLError, match="private"):
        asyncio.run(run())


def test_credentials_in_url_rejected():
    with pytest.raises(BlockedURLError, match="credentials"):
        fetch("http://user:pw@127.0.0.1:1/x.png")


@pytest.mark.parametrize("url", ["x" * 50_000 + ":y", "s3://" + "b" * 50_000 + "/key"])
def test_huge_scheme_or_bucket_not_echoed_whole(url):
    # Found by tests/unit/test_fuzz_requests.py: the whole scheme or bucket came back in the
    # 400's message, so a 50 kB URL made a 50 kB error body.
    with pytest.raises(BlockedURLError, match="not supported|not one this server") as info:
        parse_image_sources([url], max_images=1, allowed_buckets=["qvq-sources"])
    assert len(info.value.message) < 300
