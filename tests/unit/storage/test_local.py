import numpy as np
import pytest

from serving.errors import InvalidRequestError, NotFoundError
from serving.messages import PreparedImage
from serving.preprocess.cache import PreparedImageLRU
from serving.preprocess.catalog import ImageCatalog, image_key, parse_image_id
from serving.preprocess.decode import decode_image
from serving.storage.base import ObjectNotFound
from serving.storage.local import LocalObjectStore
from tests.images import encode, photo

LIMITS = dict(min_pixels=3136, max_pixels=200704, max_source_pixels=64_000_000,
              allowed_formats=["JPEG", "PNG"])


def test_local_store_roundtrip_and_atomicity(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.check()
    store.put("a/b/c", b"data", content_type="image/png", metadata={"k": "v"})
    assert store.get("a/b/c") == b"data"
    info = store.head("a/b/c")
    assert (info.size, info.content_type, info.metadata) == (4, "image/png", {"k": "v"})
    assert store.list_keys("a/") == ["a/b/c"]
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    store.delete("a/b/c")
    assert store.head("a/b/c") is None
    with pytest.raises(ObjectNotFound):
        store.get("a/b/c")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", ""])
def test_local_store_rejects_escaping_keys(tmp_path, key):
    with pytest.raises(ValueError):
        LocalObjectStore(tmp_path).put(key, b"x")


def test_local_store_has_no_presigned_urls(tmp_path):
    with pytest.raises(InvalidRequestError, match="S3 storage backend"):
        LocalObjectStore(tmp_path).presign_put("k", 60, "image/png")


def test_catalog_with_local_store(tmp_path):
    catalog = ImageCatalog(LocalObjectStore(tmp_path))
    data = encode(photo(300, 200, seed=2), "PNG")
    image = decode_image(data, **LIMITS)
    record = catalog.put_image(data, image)
    assert record.id == "img-" + image.sha256 and record.url == "qvq-image://" + image.sha256
    assert catalog.describe(image.sha256) == record
    assert catalog.get_image_bytes(image.sha256) == data
    assert (tmp_path / image_key(image.sha256)).exists()
    with pytest.raises(NotFoundError):
        catalog.describe("0" * 64)
    catalog.put_preprocessed(image, 3136, 200704)
    back = catalog.get_preprocessed(image.sha256, 3136, 200704)
    assert np.array_equal(back.pixels, image.pixels) and back.source_format == "PNG"


def test_corrupt_preprocessed_entry_is_a_miss(tmp_path):
    store = LocalObjectStore(tmp_path)
    catalog = ImageCatalog(store)
    sha = "ab" * 32
    store.put(f"preprocessed/sha256/ab/{sha}/1-2.npy", b"not numpy")
    assert catalog.get_preprocessed(sha, 1, 2) is None


@pytest.mark.parametrize("value,expected", [
    ("img-" + "a" * 64, "a" * 64), ("qvq-image://" + "b" * 64, "b" * 64),
    ("qvq-image://img-" + "c" * 64, "c" * 64), ("A" * 64, "a" * 64),
    ("img-xyz", None), ("", None), ("a" * 63, None),
])
def test_parse_image_id(value, expected):
    assert parse_image_id(value) == expected


def _img(nbytes_side: int, sha: str) -> PreparedImage:
    return PreparedImage(pixels=np.zeros((nbytes_side, nbytes_side, 3), np.uint8),
                         source_width=1, source_height=1, source_format="PNG", sha256=sha)


def test_lru_is_bounded_by_bytes_and_evicts_oldest():
    lru = PreparedImageLRU(max_bytes=3 * 10 * 10 * 3)
    for i in range(3):
        lru.put(f"k{i}", _img(10, str(i)))
    assert len(lru) == 3
    lru.get("k0")  # k0 is now the most recent
    lru.put("k3", _img(10, "3"))
    assert lru.get("k1") is None and lru.get("k0") is not None
    assert lru.size_bytes <= 3 * 300
    lru.put("huge", _img(100, "h"))  # bigger than the whole cache: not cached
    assert lru.get("huge") is None


def test_lru_disabled_with_zero_bytes():
    lru = PreparedImageLRU(0)
    lru.put("k", _img(1, "x"))
    assert lru.get("k") is None


def test_list_keys_walks_only_the_prefix_directory(tmp_path, monkeypatch):
    import pathlib

    from serving.storage.local import LocalObjectStore

    store = LocalObjectStore(tmp_path / "root")
    for key in ("images/sha256/ab/1", "images/sha256/cd/2", "batches/_active/x/b1",
                "batches/_active/x/b2", "batches/other", "batchesque/z"):
        store.put(key, b"d", content_type="application/octet-stream")
    walked = []
    real = pathlib.Path.rglob

    def spy(self, pattern):
        walked.append(self)
        return real(self, pattern)

    monkeypatch.setattr(pathlib.Path, "rglob", spy)
    assert store.list_keys("batches/_active/") == ["batches/_active/x/b1",
                                                    "batches/_active/x/b2"]
    assert walked == [tmp_path / "root" / "batches" / "_active"]
    assert store.list_keys("batches") == ["batches/_active/x/b1", "batches/_active/x/b2",
                                          "batches/other", "batchesque/z"]
    assert store.list_keys("batches/_active/x/b") == ["batches/_active/x/b1",
                                                      "batches/_active/x/b2"]
    assert store.list_keys("nothing/here/") == []
