"""Image sources: one class per kind of ``image_url`` (``data:``, http(s), ``s3://``,
``qvq-image://``), each checking its URL at the edge and loading the encoded bytes in the
preprocessor; plus the guarded http(s) fetcher and data-URL decoding they use, and each
image's pixel bounds (``detail`` or explicit ``min_pixels`` / ``max_pixels``), resolved at the
edge with its source."""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import ipaddress
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
import pybase64

from serving.config import FetchConfig, ImageConfig
from serving.errors import (
    BlockedURLError,
    ImageError,
    ImageFetchError,
    InvalidRequestError,
    PayloadTooLargeError,
    elide,
)
from serving.messages import ImageSource
from serving.preprocess.ssrf import (
    IPAddress,
    IPNetwork,
    blocked_reason,
    parse_host_address,
    parse_networks,
)
from serving.protocol import ImageURL

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_ECHO_CHARS = 64  # of a scheme or bucket name echoed in an error message


def describe_size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def decode_data_url(url: str, *, max_bytes: int) -> bytes:
    """Bytes of a ``data:image/...;base64,...`` URL; 400 on bad syntax, 413 over the limit."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("data URL has no ',' separating the header from the data; expected "
                         "data:image/<type>;base64,<data>")
    params = header[len("data:"):].split(";")
    media_type = params[0].strip().lower()
    if media_type and not media_type.startswith("image/"):
        raise ImageError(f"data URL media type {media_type!r} is not an image type; "
                         "expected data:image/<type>;base64,<data>")
    if "base64" in (p.strip().lower() for p in params[1:]):
        payload = payload.strip()
        if len(payload) * 3 // 4 > max_bytes + 3:
            raise PayloadTooLargeError(f"image is larger than the {describe_size(max_bytes)} "
                                       "limit; send a smaller or more compressed image")
        try:
            data = pybase64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("data URL is not valid base64; encode the image bytes with "
                             "standard base64 (A-Z, a-z, 0-9, +, /, = padding)") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"image is larger than the {describe_size(max_bytes)} limit; "
                                   "send a smaller or more compressed image")
    if not data:
        raise ImageError("image is empty: the data URL holds no bytes")
    return data


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


class ImageFetcher:
    """Fetches http(s) images with the SSRF guard, redirect re-checks and byte/time caps. Its
    connection pool lives as long as the preprocessor replica that holds it."""

    def __init__(self, config: FetchConfig, *, max_bytes: int, resolver: Resolver | None = None):
        self._config = config
        self._max_bytes = max_bytes
        self._allowed: Sequence[IPNetwork] = parse_networks(config.allowed_cidrs)
        self._resolve = resolver or system_resolver
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s,
                                  write=config.read_timeout_s, pool=config.connect_timeout_s),
            follow_redirects=False, trust_env=False,
            headers={"User-Agent": config.user_agent, "Accept": "image/*"},
        )

    async def fetch(self, url: str) -> bytes:
        if not self._config.enabled:
            raise BlockedURLError("http(s) image URLs are disabled on this server; send the "
                                  "image as a data URL")
        try:
            async with asyncio.timeout(self._config.total_timeout_s):
                return await self._follow(url)
        except TimeoutError:
            raise ImageFetchError(f"fetching the image URL took longer than "
                                  f"{self._config.total_timeout_s:g}s") from None

    async def _pinned_address(self, target: httpx.URL) -> IPAddress:
        host = target.host
        if not host:
            raise ImageError("image URL has no host")
        port = target.port or (443 if target.scheme == "https" else 80)
        literal = parse_host_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self._resolve(host, port)
            except (OSError, UnicodeError):
                raise ImageFetchError(f"could not resolve image host {host!r}") from None
            if not addresses:
                raise ImageFetchError(f"image host {host!r} has no addresses")
        for addr in addresses:
            reason = blocked_reason(addr, self._allowed)
            if reason:
                raise BlockedURLError(f"image URL host {host!r} resolves to a {reason} address; "
                                      "only public addresses may be fetched")
        return addresses[0]

    async def _follow(self, url: str) -> bytes:
        for _hop in range(self._config.max_redirects + 1):
            target = self._parse(url)
            addr = await self._pinned_address(target)
            pinned = target.copy_with(host=str(addr))
            headers = {"Host": target.netloc.decode("ascii")}
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            try:
                async with self._client.stream("GET", pinned, headers=headers,
                                               extensions=extensions) as resp:
                    if resp.status_code in _REDIRECTS and "location" in resp.headers:
                        url = str(target.join(resp.headers["location"]))
                        continue
                    if resp.status_code != 200:
                        raise ImageFetchError(f"image URL returned HTTP {resp.status_code}; "
                                              "expected 200")
                    return await self._read_capped(resp)
            except httpx.TimeoutException:
                raise ImageFetchError("timed out fetching the image URL") from None
            except httpx.HTTPError as exc:
                raise ImageFetchError(f"could not fetch the image URL: "
                                      f"{type(exc).__name__}") from None
        raise ImageFetchError(f"image URL redirected more than {self._config.max_redirects} "
                              "times")

    @staticmethod
    def _parse(url: str) -> httpx.URL:
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise ImageError("image URL is not a valid URL") from None
        if target.scheme not in ("http", "https"):
            raise BlockedURLError(f"image URL scheme {target.scheme!r} is not supported; use "
                                  "https://, http:// or a data: URL")
        if target.userinfo:
            raise BlockedURLError("image URLs with credentials (user:pass@) are not accepted")
        return target

    async def _read_capped(self, resp: httpx.Response) -> bytes:
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise PayloadTooLargeError(f"image at URL is {describe_size(int(declared))}, over the "
                                       f"{describe_size(self._max_bytes)} limit")
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.aiter_bytes():
            total += len(chunk)
            if total > self._max_bytes:
                raise PayloadTooLargeError(f"image at URL is over the "
                                           f"{describe_size(self._max_bytes)} limit")
            chunks.append(chunk)
        if not total:
            raise ImageError("image URL returned no bytes")
        return b"".join(chunks)


class SourceType(Protocol):
    """One kind of image source. Adding a source is one class here and one line in
    :data:`SOURCE_TYPES`: ``check`` runs at the edge (router, batch runner) before any hop,
    ``load`` in the preprocessor."""

    kind: str  # the name an ImageSource carries to the preprocessor
    schemes: tuple[str, ...]  # URL schemes it reads, lower case
    stored: bool  # the image is already in our image store (nothing to keep a copy of)

    def check(self, url: str, allowed_buckets: Sequence[str]) -> ImageSource:
        """Parse and check the URL without any I/O; 400 (ImageError/BlockedURLError) if bad."""
        ...

    async def load(self, source: ImageSource, ctx: SourceContext) -> bytes | None:
        """The encoded image bytes; None when the image is known by its hash alone."""
        ...


@dataclass(frozen=True)
class SourceContext:
    """What loading needs, provided by the preprocessor replica."""

    max_bytes: int
    fetcher: ImageFetcher
    read_s3: Callable[[str, str], bytes]  # (bucket, key) -> bytes, blocking


class DataURLSource:
    kind, schemes, stored = "data", ("data",), False

    def check(self, url: str, allowed_buckets: Sequence[str]) -> ImageSource:
        return ImageSource(self.kind, url)

    async def load(self, source: ImageSource, ctx: SourceContext) -> bytes:
        return decode_data_url(source.url, max_bytes=ctx.max_bytes)


class HttpSource:
    """http(s) URLs; the SSRF guard runs when fetching (it needs the resolved addresses)."""

    kind, schemes, stored = "http", ("http", "https"), False

    def check(self, url: str, allowed_buckets: Sequence[str]) -> ImageSource:
        return ImageSource(self.kind, url)

    async def load(self, source: ImageSource, ctx: SourceContext) -> bytes:
        return await ctx.fetcher.fetch(source.url)


class S3Source:
    """``s3://bucket/key`` of a bucket in ``storage.allowed_source_buckets``."""

    kind, schemes, stored = "s3", ("s3",), False

    def check(self, url: str, allowed_buckets: Sequence[str]) -> ImageSource:
        rest = url[len("s3://"):] if url.lower().startswith("s3://") else ""
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise ImageError("s3 image URLs must look like s3://bucket/key")
        if bucket not in allowed_buckets:
            raise BlockedURLError(f"bucket {elide(bucket, _MAX_ECHO_CHARS)!r} is not one this "
                                  "server may read images from"
                                  + (f"; allowed: {', '.join(allowed_buckets)}"
                                     if allowed_buckets
                                     else " (storage.allowed_source_buckets is empty)"))
        return ImageSource(self.kind, url, bucket=bucket, key=key)

    async def load(self, source: ImageSource, ctx: SourceContext) -> bytes:
        assert source.bucket is not None and source.key is not None
        return await asyncio.to_thread(ctx.read_s3, source.bucket, source.key)


class StoredImageSource:
    """``qvq-image://<sha256>``: an image uploaded with POST /v1/images, known by its hash."""

    kind, schemes, stored = "ref", ("qvq-image",), True

    def check(self, url: str, allowed_buckets: Sequence[str]) -> ImageSource:
        from serving.preprocess.catalog import parse_image_id

        sha = parse_image_id(url)
        if sha is None:
            raise ImageError("uploaded-image references look like qvq-image://<64 hex sha256> "
                             "(the `url` returned by POST /v1/images)")
        return ImageSource(self.kind, url, sha256=sha)

    async def load(self, source: ImageSource, ctx: SourceContext) -> None:
        return None  # the preprocessor finds pixels or bytes by the hash


SOURCE_TYPES: tuple[SourceType, ...] = (DataURLSource(), HttpSource(), S3Source(),
                                        StoredImageSource())
_BY_SCHEME = {scheme: t for t in SOURCE_TYPES for scheme in t.schemes}
_BY_KIND = {t.kind: t for t in SOURCE_TYPES}


def source_type(kind: str) -> SourceType:
    return _BY_KIND[kind]


def check_source(url: str, allowed_buckets: Sequence[str]) -> ImageSource:
    """The source an image URL names, checked; 400 for anything this server does not read."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    kind = _BY_SCHEME.get(scheme)
    if kind is None:
        shown = elide(scheme, _MAX_ECHO_CHARS) + ":" if scheme else "(none)"
        raise BlockedURLError(f"image URL scheme {shown} is not supported; use a data: URL, "
                              "https://, http://, s3://bucket/key or qvq-image://<sha256> of an "
                              "uploaded image")
    return kind.check(url, allowed_buckets)


def parse_image_sources(urls: Sequence[str], *, max_images: int,
                        allowed_buckets: Sequence[str]) -> tuple[ImageSource, ...]:
    """The image sources of one request, checked before any hop (count, scheme, bucket, ref)."""
    if len(urls) > max_images:
        raise ImageError(f"request has {len(urls)} images; at most {max_images} are allowed per "
                         "request", param="messages", code="too_many_images")
    return tuple(check_source(url, allowed_buckets) for url in urls)


def pixel_bounds(image_url: ImageURL, image: ImageConfig, *, param: str) -> tuple[int, int]:
    """The (min, max) pixel count one image is resized into: its explicit ``min_pixels`` /
    ``max_pixels``, else the deployment's ``min_pixels`` and its ``detail``'s ceiling (an
    explicit min above that ceiling lifts the ceiling to it). ``param`` locates the image_url
    in the request, for the 400 an explicit bound outside the deployment's bounds gets: vLLM
    resizes to those again (engine args), so a bound outside them would be undone there,
    behind the prompt's token count."""
    for name in ("min_pixels", "max_pixels"):
        value = getattr(image_url, name)
        if value is not None and not image.min_pixels <= value <= image.max_pixels:
            raise InvalidRequestError(
                f"{param}.{name} is {value}; this server resizes images to between "
                f"{image.min_pixels} and {image.max_pixels} pixels (one visual token per 28x28 "
                "block): send a value in that range, or leave it out", param=f"{param}.{name}")
    low = image.min_pixels if image_url.min_pixels is None else image_url.min_pixels
    high = (max(image.detail_ceiling(image_url.detail), low) if image_url.max_pixels is None
            else image_url.max_pixels)
    return low, high


def parse_image_parts(parts: Sequence[tuple[str, ImageURL]], *, image: ImageConfig,
                      allowed_buckets: Sequence[str]) -> tuple[ImageSource, ...]:
    """:func:`parse_image_sources` for a request's ``image_url`` objects, each given with its
    param path (``messages[0].content[1].image_url``); every source carries its pixel bounds,
    resolved here once, so the preprocessor resizes and caches each image at its own."""
    sources = parse_image_sources([url.url for _, url in parts],
                                  max_images=image.max_images_per_request,
                                  allowed_buckets=allowed_buckets)
    resolved = []
    for source, (param, url) in zip(sources, parts, strict=True):
        low, high = pixel_bounds(url, image, param=param)
        resolved.append(dataclasses.replace(source, min_pixels=low, max_pixels=high))
    return tuple(resolved)
