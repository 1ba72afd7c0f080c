"""The preprocessor's cache tiers and image store, in-process with a local store (no Ray)."""

import asyncio
import hashlib

import pytest

from serving.config import config_from_dict
from serving.errors import ImageError, PayloadTooLargeError
from serving.preprocess.catalog import image_key
from serving.preprocess.preprocessor import ImagePreprocessor
from serving.preprocess.sources import check_source
from serving.storage.local import LocalObjectStore
from tests.images import data_url, encode, photo


def make(tmp_path, **storage):
    config = config_from_dict({"model": {"path": "m"},
                               "image": {"min_pixels": 3136, "max_pixels": 200704,
                                         "max_image_bytes": 2_000_000},
                               "storage": {"local": {"root": str(tmp_path)}, **storage}},
                              environ={})
    return ImagePreprocessor(config)


def sources(urls):
    """The image URLs as the edge checks them (serving.preprocess.sources)."""
    return [check_source(url, allowed_buckets=[]) for url in urls]


def run(pre, coro):
    async def go():
        try:
            return await coro
        finally:
            await pre.drain()
    return asyncio.run(go())


def test_tiers_miss_memory_store(tmp_path):
    data = encode(photo(800, 600, seed=41), "JPEG")
    url = data_url(data, "image/jpeg")
    first = make(tmp_path)
    images = run(first, first.prepare(sources([url, url])))
    assert [i.cache for i in images] == ["miss", "memory"]
    assert images[0].pixels is images[1].pixels  # one decode shared by both
    assert run(first, first.prepare(sources([url])))[0].cache == "memory"
    other_replica = make(tmp_path)  # empty LRU, same object store
    hit = run(other_replica, other_replica.prepare(sources([url])))[0]
    assert hit.cache == "store"
    assert (hit.pixels == images[0].pixels).all()
    sha = hashlib.sha256(data).hexdigest()
    assert LocalObjectStore(tmp_path).get(image_key(sha)) == data  # kept for replay


def test_request_images_not_stored_when_disabled(tmp_path):
    data = encode(photo(100, 100, seed=42), "PNG")
    pre = make(tmp_path, store_request_images=False)
    run(pre, pre.prepare(sources([data_url(data)])))
    assert LocalObjectStore(tmp_path).head(image_key(hashlib.sha256(data).hexdigest())) is None


def test_upload_validates_and_references_work(tmp_path):
    pre = make(tmp_path)
    data = encode(photo(300, 200, seed=43), "PNG")
    record = run(pre, pre.upload(data))
    assert (record["width"], record["height"], record["format"]) == (300, 200, "PNG")
    fresh = make(tmp_path)
    image = run(fresh, fresh.prepare(sources([record["url"]])))[0]
    assert image.cache in ("store", "miss") and image.sha256 == record["sha256"]
    with pytest.raises(ImageError, match="not a decodable image"):
        run(pre, pre.upload(b"GIF89a but not really"))
    with pytest.raises(PayloadTooLargeError):
        run(pre, pre.upload(b"x" * 2_000_001))
    with pytest.raises(ImageError, match="names no uploaded image"):
        run(pre, pre.prepare(sources(["qvq-image://" + "e" * 64])))


def test_failed_decode_is_not_cached_and_waiters_see_the_error(tmp_path):
    pre = make(tmp_path)
    bad = data_url(b"definitely not an image")
    with pytest.raises(ImageError):
        run(pre, pre.prepare(sources([bad, bad])))
    assert pre._inflight == {}
    with pytest.raises(ImageError):
        run(pre, pre.prepare(sources([bad])))
