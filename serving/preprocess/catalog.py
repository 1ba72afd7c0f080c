"""Content-addressed images and preprocessed pixels in the object store.

Layout (keys)::

    images/sha256/ab/abcdef...            original bytes; metadata: content type, format, size
    preprocessed/sha256/ab/abcdef.../<min_pixels>-<max_pixels>.npy
                                          RGB pixels already on the model grid (NumPy .npy)
    uploads/<upload id>                   presigned-upload staging objects (deleted on completion)

The same bytes map to the same key, so an image is stored once however often it arrives.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import asdict, dataclass

import numpy as np

from serving.errors import NotFoundError
from serving.messages import PreparedImage
from serving.storage.base import ObjectNotFound, ObjectStore

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMAGE_ID_PREFIX = "img-"
IMAGE_REF_SCHEME = "qvq-image://"
_FORMAT_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                "GIF": "image/gif", "BMP": "image/bmp"}


def image_key(sha256: str) -> str:
    return f"images/sha256/{sha256[:2]}/{sha256}"


def preprocessed_key(sha256: str, min_pixels: int, max_pixels: int) -> str:
    return f"preprocessed/sha256/{sha256[:2]}/{sha256}/{min_pixels}-{max_pixels}.npy"


def cache_key(sha256: str, min_pixels: int, max_pixels: int) -> str:
    return f"{sha256}:{min_pixels}:{max_pixels}"


def parse_image_id(value: str) -> str | None:
    """The SHA-256 an image id (``img-<sha>``), bare hash or ``qvq-image://`` reference names."""
    value = value.removeprefix(IMAGE_REF_SCHEME).removeprefix(IMAGE_ID_PREFIX).lower()
    return value if SHA256_RE.match(value) else None


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What /v1/images returns about a stored image."""

    id: str
    sha256: str
    width: int
    height: int
    bytes: int
    content_type: str
    format: str
    created_at: int
    url: str
    object: str = "image"

    def to_dict(self) -> dict:
        return asdict(self)


def _record(sha256: str, size: int, content_type: str, meta: dict[str, str]) -> ImageRecord:
    return ImageRecord(id=IMAGE_ID_PREFIX + sha256, sha256=sha256,
                       width=int(meta.get("width", 0)), height=int(meta.get("height", 0)),
                       bytes=size, content_type=content_type, format=meta.get("format", ""),
                       created_at=int(meta.get("created-at", 0)),
                       url=IMAGE_REF_SCHEME + sha256)


class ImageCatalog:
    def __init__(self, store: ObjectStore):
        self.store = store

    def put_image(self, data: bytes, image: PreparedImage) -> ImageRecord:
        """Store the original bytes once (a HEAD first: repeats cost no upload)."""
        key = image_key(image.sha256)
        info = self.store.head(key)
        if info is not None:
            return _record(image.sha256, info.size, info.content_type, info.metadata)
        meta = {"width": str(image.source_width), "height": str(image.source_height),
                "format": image.source_format, "created-at": str(int(time.time()))}
        content_type = _FORMAT_MIME.get(image.source_format, "application/octet-stream")
        self.store.put(key, data, content_type=content_type, metadata=meta)
        return _record(image.sha256, len(data), content_type, meta)

    def describe(self, sha256: str) -> ImageRecord:
        info = self.store.head(image_key(sha256))
        if info is None:
            raise NotFoundError(f"no image with id {IMAGE_ID_PREFIX}{sha256}; upload it with "
                                "POST /v1/images first", param="id")
        return _record(sha256, info.size, info.content_type, info.metadata)

    def get_image_bytes(self, sha256: str) -> bytes:
        try:
            return self.store.get(image_key(sha256))
        except ObjectNotFound:
            raise NotFoundError(f"no image with id {IMAGE_ID_PREFIX}{sha256}; upload it with "
                                "POST /v1/images first", param="id") from None

    def put_preprocessed(self, image: PreparedImage, min_pixels: int, max_pixels: int) -> None:
        key = preprocessed_key(image.sha256, min_pixels, max_pixels)
        buf = io.BytesIO()
        np.save(buf, image.pixels, allow_pickle=False)
        meta = {"source-width": str(image.source_width),
                "source-height": str(image.source_height), "format": image.source_format}
        self.store.put(key, buf.getvalue(), content_type="application/x-npy", metadata=meta)

    def get_preprocessed(self, sha256: str, min_pixels: int,
                         max_pixels: int) -> PreparedImage | None:
        key = preprocessed_key(sha256, min_pixels, max_pixels)
        info = self.store.head(key)
        if info is None:
            return None
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            return None
        try:
            pixels = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError:
            return None  # a corrupt entry is a miss; the decode path rewrites it
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            return None
        m = info.metadata
        return PreparedImage(pixels=pixels, source_width=int(m.get("source-width", 0)),
                             source_height=int(m.get("source-height", 0)),
                             source_format=m.get("format", ""), sha256=sha256, cache="store")
