"""ImagePreprocessor: the CPU tier that turns image URLs into model-ready pixels.

Runs as its own autoscaled Ray Serve deployment on CPU nodes, so the GPU replicas never fetch,
decode or resize. It returns :class:`~serving.protocol.PreparedImage` objects whose pixel arrays
travel to the generator through Ray's object store (no base64 on the way).
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from serving.config import ServingConfig
from serving.images.decode import decode_image
from serving.images.sources import ImageFetcher, classify_url, decode_data_url
from serving.protocol import PreparedImage

logger = logging.getLogger("qvq.preprocessor")


class ImagePreprocessor:
    def __init__(self, config: ServingConfig):
        self._image = config.image
        self._fetcher = ImageFetcher(config.fetch, max_bytes=config.image.max_image_bytes)

    async def _load_bytes(self, url: str) -> bytes:
        if classify_url(url) == "data":
            return decode_data_url(url, max_bytes=self._image.max_image_bytes)
        return await self._fetcher.fetch(url)

    async def _prepare_one(self, url: str) -> PreparedImage:
        data = await self._load_bytes(url)
        # Pillow releases the GIL while decoding and resizing, so a thread keeps the replica's
        # event loop free to fetch other images meanwhile.
        return await asyncio.to_thread(
            decode_image, data, min_pixels=self._image.min_pixels,
            max_pixels=self._image.max_pixels, max_source_pixels=self._image.max_source_pixels,
            allowed_formats=self._image.allowed_formats)

    async def prepare(self, urls: list[str]) -> list[PreparedImage]:
        """All images of one request, in order; the first failure fails the request."""
        tasks = [asyncio.create_task(self._prepare_one(u)) for u in urls]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()

    async def check_health(self) -> None:
        """Serve's periodic replica health check: the event loop answers."""

    async def ping(self) -> str:
        return "ok"


def preprocessor_deployment(config: ServingConfig) -> serve.Deployment:
    dep = config.deployments.preprocessor
    actor_options: dict = {"num_cpus": dep.num_cpus}
    if dep.memory_gib:
        actor_options["memory"] = int(dep.memory_gib * 2**30)
    return serve.deployment(
        ImagePreprocessor, name="ImagePreprocessor",
        ray_actor_options=actor_options,
        max_ongoing_requests=dep.max_ongoing_requests,
        autoscaling_config=dep.autoscaling.to_serve(),
    )
