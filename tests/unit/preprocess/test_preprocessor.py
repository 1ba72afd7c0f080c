"""The preprocessor's cache tiers and image store, in-process with a local store (no Ray)."""

import asyncio
import dataclasses
import hashlib

import pytest
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as vllm_resize

from serving.config import config_from_dict
from serving.errors import ImageError, PayloadTooLargeError
from serving.preprocess.catalog import cache_key, image_key, preprocessed_key
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


def with_bounds(url, low, high):
    """A source as the edge resolves it for one detail value or explicit bounds."""
    return dataclasses.replace(check_source(url, allowed_buckets=[]), min_pixels=low,
                               max_pixels=high)


LOW, HIGH = (3136, 3136), (3136, 200704)  # make()'s deployment: low = min_pixels


def test_one_image_at_two_budgets_is_two_cache_entries(tmp_path):
    data = encode(photo(800, 600, seed=44), "JPEG")
    url, sha = data_url(data, "image/jpeg"), hashlib.sha256(data).hexdigest()
    pre = make(tmp_path)
    low, high = run(pre, pre.prepare([with_bounds(url, *LOW), with_bounds(url, *HIGH)]))
    assert [low.cache, high.cache] == ["miss", "miss"]  # never served from the other budget
    assert low.width * low.height < high.width * high.height <= HIGH[1]
    assert pre._lru.get(cache_key(sha, *LOW)).pixels is low.pixels
    assert pre._lru.get(cache_key(sha, *HIGH)).pixels is high.pixels
    again = run(pre, pre.prepare([with_bounds(url, *LOW)]))[0]
    assert again.cache == "memory" and again.pixels.shape == low.pixels.shape
    store = LocalObjectStore(tmp_path)
    assert store.head(preprocessed_key(sha, *LOW)) and store.head(preprocessed_key(sha, *HIGH))
    other_replica = make(tmp_path)
    from_store = run(other_replica, other_replica.prepare([with_bounds(url, *LOW)]))[0]
    assert from_store.cache == "store" and (from_store.pixels == low.pixels).all()


def test_a_source_without_bounds_gets_the_deployments(tmp_path):
    data = encode(photo(800, 600, seed=45), "JPEG")
    pre = make(tmp_path)
    plain = run(pre, pre.prepare(sources([data_url(data, "image/jpeg")])))[0]
    assert (plain.height, plain.width) == vllm_resize(600, 800, min_pixels=3136,
                                                      max_pixels=200704)


@pytest.mark.parametrize("size", [(800, 600), (1000, 700), (600, 1000), (333, 2000), (60, 40)])
@pytest.mark.parametrize("bounds", [(3136, 3136), (3136, 12544), (12544, 50176), (3136, 200704)])
def test_pixels_within_the_images_bounds_and_kept_by_the_engine(tmp_path, size, bounds):
    pre = make(tmp_path, store_request_images=False)
    pre._cache_cfg = pre._cache_cfg.model_copy(update={"store_tier": False})
    image = run(pre, pre.prepare([with_bounds(data_url(encode(photo(*size, seed=46)), "image/png"),
                                              *bounds)]))[0]
    pixels, (low, high) = image.width * image.height, bounds
    assert image.width % 28 == 0 and image.height % 28 == 0
    # vLLM's processor resizes to the deployment's bounds again: the prepared size must be
    # one it keeps, or usage.prompt_tokens would not be the engine's count
    assert vllm_resize(image.height, image.width, min_pixels=3136,
                       max_pixels=200704) == (image.height, image.width)
    # rounding to the grid moves the count by less than a row and a column of tokens
    grid_step = 28 * (image.width + image.height + 28)
    if high - low >= grid_step:
        assert low <= pixels <= high
    else:  # a budget that narrow is met as closely as the grid allows, never below min_pixels
        assert 3136 <= pixels <= max(high, low + grid_step)
