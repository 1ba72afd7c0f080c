"""ImagePreprocessor: the CPU tier that turns image sources into model-ready pixels.

Runs as its own autoscaled Ray Serve deployment on CPU nodes, so GPU replicas never fetch,
decode or resize. It returns :class:`~serving.protocol.PreparedImage` objects whose pixel arrays
travel to the generator through Ray's object store (no base64 on the way).

A repeated image costs no decode: pixels are cached under (SHA-256 of the bytes, resize
bounds) in an in-memory LRU and in the object store, and concurrent requests for the same image
share one decode. The bounds are each image's own (resolved at the edge from ``detail`` or
explicit bounds), so one image at two budgets is two entries. It also owns the image store:
request images are kept content-addressed, and uploads (/v1/images) are validated by decoding
them here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ray import serve

from serving.config import ServingConfig
from serving.errors import (
    APIError,
    ImageError,
    ImageFetchError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from serving.logs import route_to_serve_logs
from serving.messages import ImageSource, PreparedImage
from serving.metrics import PreprocessorMetrics
from serving.preprocess.cache import PreparedImageLRU
from serving.preprocess.catalog import ImageCatalog, cache_key, parse_image_id
from serving.preprocess.decode import decode_image
from serving.preprocess.sources import (
    ImageFetcher,
    SourceContext,
    describe_size,
    source_type,
)
from serving.roles import PREPROCESSOR
from serving.storage.base import ObjectNotFound, ObjectStore
from serving.storage.factory import open_store

logger = logging.getLogger("qvq.preprocessor")

UPLOAD_PREFIX = "uploads/"


class ImagePreprocessor:
    def __init__(self, config: ServingConfig):
        import cv2

        route_to_serve_logs()

        # Parallelism comes from concurrent requests (one decode per thread); OpenCV's own
        # thread pool on top would oversubscribe the replica's CPUs.
        cv2.setNumThreads(1)
        self._image = config.image
        self._storage = config.storage
        self._cache_cfg = config.cache
        fetcher = ImageFetcher(config.fetch, max_bytes=config.image.max_image_bytes)
        self._sources = SourceContext(max_bytes=config.image.max_image_bytes, fetcher=fetcher,
                                      read_s3=self._read_s3)
        self._store: ObjectStore = open_store(config.storage)
        self._store.check()  # bad credentials / bucket fail the replica at startup, clearly
        self._catalog = ImageCatalog(self._store)
        self._lru = PreparedImageLRU(config.cache.memory_mib * 2**20)
        self._inflight: dict[str, asyncio.Future[PreparedImage]] = {}
        self._background: set[asyncio.Task] = set()
        self._source_stores: dict[str, ObjectStore] = {}
        self._metrics = PreprocessorMetrics()

    # ------------------------------------------------------------------ sources

    def _source_store(self, bucket: str) -> ObjectStore:
        store = self._source_stores.get(bucket)
        if store is None:
            from serving.storage.s3 import S3ObjectStore

            assert self._storage.s3 is not None  # config validation guarantees it
            store = S3ObjectStore(self._storage.s3, bucket=bucket)
            self._source_stores[bucket] = store
        return store

    def _read_s3(self, bucket: str, key: str) -> bytes:
        store = self._source_store(bucket)
        info = store.head(key)
        if info is None:
            raise ImageFetchError(f"s3 object s3://{bucket}/{key} does not exist")
        if info.size > self._image.max_image_bytes:
            raise PayloadTooLargeError(f"s3 object is {describe_size(info.size)}, over the "
                                       f"{describe_size(self._image.max_image_bytes)} limit")
        try:
            return store.get(key)
        except ObjectNotFound:
            raise ImageFetchError(f"s3 object s3://{bucket}/{key} does not exist") from None

    async def _load_bytes(self, source: ImageSource) -> bytes | None:
        """The source's encoded bytes (None: an uploaded image, known by its hash)."""
        t0 = time.perf_counter()
        data = await source_type(source.kind).load(source, self._sources)
        if data is not None:
            self._metrics.stage_seconds.observe(time.perf_counter() - t0,
                                                tags={"stage": "fetch"})
            self._metrics.image_bytes.observe(len(data))
        return data

    # ------------------------------------------------------------------ prepare

    async def prepare(self, sources: Sequence[ImageSource]) -> list[PreparedImage]:
        """All images of one request (checked at the edge: serving.preprocess.sources), in
        order; the first failure fails the request."""
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(self._prepare_one(s)) for s in sources]
        try:
            images = list(await asyncio.gather(*tasks))
            logger.info("prepared %d image(s) in %.0f ms (cache: %s)", len(images),
                        (time.perf_counter() - t0) * 1e3, ",".join(i.cache for i in images))
            return images
        finally:
            for t in tasks:
                t.cancel()

    def _bounds(self, source: ImageSource) -> tuple[int, int]:
        """The (min, max) pixels this image is resized into: its own, else the deployment's."""
        return (self._image.min_pixels if source.min_pixels is None else source.min_pixels,
                self._image.max_pixels if source.max_pixels is None else source.max_pixels)

    async def _prepare_one(self, source: ImageSource) -> PreparedImage:
        data = await self._load_bytes(source)
        sha = source.sha256 if data is None else hashlib.sha256(data).hexdigest()
        assert sha is not None
        bounds = self._bounds(source)
        key = cache_key(sha, *bounds)
        hit = self._lru.get(key)
        if hit is not None:
            self._metrics.cache_lookups.inc(tags={"result": "memory"})
            return dataclasses.replace(hit, cache="memory")
        pending = self._inflight.get(key)
        if pending is not None:  # the same image is being decoded right now: share it
            self._metrics.cache_lookups.inc(tags={"result": "memory"})
            return dataclasses.replace(await asyncio.shield(pending), cache="memory")
        future: asyncio.Future[PreparedImage] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            image = await self._resolve(sha, bounds, data, source_type(source.kind).stored)
            future.set_result(image)
            return image
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters re-raise it
            raise
        finally:
            del self._inflight[key]

    async def _resolve(self, sha: str, bounds: tuple[int, int], data: bytes | None,
                       in_store: bool) -> PreparedImage:
        """Pixels at ``bounds`` from the store tier, else decoded here (bytes read from the
        image store when the source gave none). ``in_store``: the original is in our image
        store already (an upload), so no copy of it is kept again."""
        lo, hi = bounds
        if self._cache_cfg.store_tier:
            try:
                cached = await asyncio.to_thread(self._catalog.get_preprocessed, sha, lo, hi)
            except APIError as exc:  # store down: the cache is an optimisation, decode instead
                logger.warning("preprocessed-image store lookup failed: %s", exc.message)
                cached = None
            if cached is not None:
                self._metrics.cache_lookups.inc(tags={"result": "store"})
                self._lru.put(cache_key(sha, lo, hi), cached)
                if data is not None and not in_store:
                    await self._keep_original(data, cached)
                return cached
        self._metrics.cache_lookups.inc(tags={"result": "miss"})
        if data is None:
            try:
                data = await asyncio.to_thread(self._catalog.get_image_bytes, sha)
            except NotFoundError:
                raise ImageError(f"image_url qvq-image://{sha} names no uploaded image; upload "
                                 "it with POST /v1/images first") from None
        image = await self._decode_and_cache(data, sha, bounds)
        if not in_store:
            await self._keep_original(data, image)
        return image

    async def _decode_and_cache(self, data: bytes, sha: str,
                                bounds: tuple[int, int] | None = None) -> PreparedImage:
        """Decode off the event loop to ``bounds`` (None: the deployment's), then fill both
        cache tiers under them (the store one in background)."""
        engine = (self._image.min_pixels, self._image.max_pixels)
        lo, hi = bounds or engine
        timings: dict[str, float] = {}
        image = await asyncio.to_thread(
            decode_image, data, min_pixels=lo, max_pixels=hi,
            max_source_pixels=self._image.max_source_pixels,
            allowed_formats=self._image.allowed_formats, sha256=sha,
            jpeg_draft_coverage=self._image.jpeg_draft_coverage, engine_bounds=engine,
            timings=timings)
        for stage, seconds in timings.items():
            self._metrics.stage_seconds.observe(seconds, tags={"stage": stage})
        self._metrics.source_pixels.observe(image.source_width * image.source_height)
        self._lru.put(cache_key(sha, lo, hi), image)
        if self._cache_cfg.store_tier:
            self._in_background(self._catalog.put_preprocessed, image, lo, hi)
        return image

    async def _keep_original(self, data: bytes, image: PreparedImage) -> None:
        if not self._storage.store_request_images:
            return
        if self._storage.require_request_image_store:
            await asyncio.to_thread(self._catalog.put_image, data, image)
        else:
            self._in_background(self._catalog.put_image, data, image)

    def _in_background(self, fn, *args: Any) -> None:
        async def run() -> None:
            try:
                t0 = time.perf_counter()
                await asyncio.to_thread(fn, *args)
                self._metrics.stage_seconds.observe(time.perf_counter() - t0,
                                                    tags={"stage": "store"})
            except Exception as exc:  # noqa: BLE001 - best effort by configuration
                self._metrics.store_failures.inc()
                logger.warning("background store write failed: %r", exc)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for the background store writes started so far (tests observe the store tier
        with it; nothing waits for them at shutdown, they are best effort)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ------------------------------------------------------------------ image API

    async def _validate_and_store(self, data: bytes) -> dict:
        image = await self._decode_and_cache(data, hashlib.sha256(data).hexdigest())
        record = await asyncio.to_thread(self._catalog.put_image, data, image)
        return record.to_dict()

    async def upload(self, data: bytes) -> dict:
        """Validate (decode) and store an uploaded image; returns its record."""
        if len(data) > self._image.max_image_bytes:
            raise PayloadTooLargeError(
                f"image is {describe_size(len(data))}, over the "
                f"{describe_size(self._image.max_image_bytes)} limit; use a presigned upload "
                "(POST /v1/images/uploads) for large files")
        return await self._validate_and_store(data)

    async def describe(self, image_id: str) -> dict:
        sha = parse_image_id(image_id)
        if sha is None:
            raise NotFoundError(f"no image with id {image_id!r}", param="id")
        return (await asyncio.to_thread(self._catalog.describe, sha)).to_dict()

    async def create_upload(self, content_type: str) -> dict:
        upload_id = "upload-" + uuid.uuid4().hex
        request = await asyncio.to_thread(self._store.presign_put, UPLOAD_PREFIX + upload_id,
                                          self._storage.presign_expiry_s, content_type)
        return {"id": upload_id, "object": "image.upload", "upload_url": request.url,
                "method": request.method, "headers": request.headers,
                "expires_at": int(time.time()) + request.expires_in_s,
                "max_bytes": self._image.max_upload_bytes,
                "complete_url": f"/v1/images/uploads/{upload_id}/complete"}

    async def complete_upload(self, upload_id: str) -> dict:
        if not upload_id.startswith("upload-") or not all(
                c in "0123456789abcdef" for c in upload_id[len("upload-"):]):
            raise NotFoundError(f"no upload with id {upload_id!r}", param="upload_id")
        key = UPLOAD_PREFIX + upload_id
        info = await asyncio.to_thread(self._store.head, key)
        if info is None:
            raise NotFoundError(f"upload {upload_id} has no data yet: PUT the bytes to its "
                                "upload_url first (or it expired)", param="upload_id")
        try:
            if info.size > self._image.max_upload_bytes:
                raise PayloadTooLargeError(
                    f"uploaded object is {describe_size(info.size)}, over the "
                    f"{describe_size(self._image.max_upload_bytes)} upload limit")
            data = await asyncio.to_thread(self._store.get, key)
            return await self._validate_and_store(data)
        finally:
            try:
                await asyncio.to_thread(self._store.delete, key)
            except ServiceUnavailableError:
                logger.warning("could not delete staging object %s", key)

    # ------------------------------------------------------------------ health

    async def check_health(self) -> None:
        """Serve's periodic replica health check: the event loop answers."""

    async def ping(self) -> str:
        return "ok"


def preprocessor_deployment(config: ServingConfig) -> serve.Deployment:
    return serve.deployment(
        ImagePreprocessor, name=PREPROCESSOR,
        **config.deployments.preprocessor.serve_options(
            log_encoding=config.server.log_encoding, access_log_default=False))
