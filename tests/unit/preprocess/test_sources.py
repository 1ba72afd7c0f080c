import asyncio
import ipaddress

import pytest

from serving.config import FetchConfig, ImageConfig
from serving.errors import (
    BlockedURLError,
    ImageError,
    ImageFetchError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from serving.preprocess.sources import (
    SOURCE_TYPES,
    ImageFetcher,
    check_source,
    decode_data_url,
    parse_image_parts,
    parse_image_sources,
    pixel_bounds,
)
from serving.protocol import ImageURL
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


# --------------------------------------------------------------------------- pixel bounds

IMAGE = ImageConfig(min_pixels=3136, max_pixels=200704)
PARAM = "messages[0].content[1].image_url"


@pytest.mark.parametrize(("fields", "bounds"), [
    ({}, (3136, 200704)),  # no detail: auto, the deployment's full budget as before
    ({"detail": "auto"}, (3136, 200704)),
    ({"detail": "high"}, (3136, 200704)),
    ({"detail": "low"}, (3136, 3136)),
])
def test_detail_picks_its_configured_ceiling(fields, bounds):
    assert pixel_bounds(ImageURL(url="u", **fields), IMAGE, param=PARAM) == bounds


def test_configured_ceilings_are_used():
    image = ImageConfig(min_pixels=3136, max_pixels=200704,
                        detail_max_pixels={"low": 12544, "auto": 100352})
    assert [pixel_bounds(ImageURL(url="u", detail=d), image, param=PARAM)[1]
            for d in ("low", "auto", "high")] == [12544, 100352, 200704]


@pytest.mark.parametrize(("fields", "bounds"), [
    ({"detail": "high", "max_pixels": 50176}, (3136, 50176)),
    ({"detail": "low", "max_pixels": 50176}, (3136, 50176)),
    ({"detail": "low", "min_pixels": 12544, "max_pixels": 50176}, (12544, 50176)),
    ({"detail": "auto", "min_pixels": 12544}, (12544, 200704)),
    # an explicit min above the detail's ceiling lifts the ceiling to it
    ({"detail": "low", "min_pixels": 12544}, (12544, 12544)),
])
def test_explicit_bounds_win_over_detail(fields, bounds):
    assert pixel_bounds(ImageURL(url="u", **fields), IMAGE, param=PARAM) == bounds


@pytest.mark.parametrize(("fields", "name"), [
    ({"max_pixels": 200705}, "max_pixels"),
    ({"max_pixels": 1568}, "max_pixels"),
    ({"min_pixels": 1568}, "min_pixels"),
    ({"min_pixels": 300_000, "max_pixels": 400_000}, "min_pixels"),
])
def test_explicit_bounds_outside_the_deployments_are_a_400_naming_the_param(fields, name):
    with pytest.raises(InvalidRequestError) as info:
        pixel_bounds(ImageURL(url="u", **fields), IMAGE, param=PARAM)
    assert info.value.status_code == 400 and info.value.param == f"{PARAM}.{name}"
    assert "between 3136 and 200704 pixels" in info.value.message
    assert f"{PARAM}.{name} is {fields[name]}" in info.value.message


def test_each_source_carries_its_resolved_bounds():
    parts = [("messages[0].content[0].image_url",
              ImageURL(url="https://x/a.png", detail="low")),
             ("messages[1].content[2].image_url",
              ImageURL(url="s3://qvq-sources/b.png", max_pixels=50176))]
    low, explicit = parse_image_parts(parts, image=IMAGE, allowed_buckets=["qvq-sources"])
    assert (low.kind, low.min_pixels, low.max_pixels) == ("http", 3136, 3136)
    assert (explicit.kind, explicit.bucket, explicit.max_pixels) == ("s3", "qvq-sources", 50176)
    with pytest.raises(InvalidRequestError) as info:
        parse_image_parts([*parts, ("messages[2].content[0].image_url",
                                    ImageURL(url="https://x/c.png", max_pixels=10**7))],
                          image=IMAGE, allowed_buckets=["qvq-sources"])
    assert info.value.param == "messages[2].content[0].image_url.max_pixels"
