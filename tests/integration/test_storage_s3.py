"""The S3 backend against a real S3 server (SeaweedFS on 127.0.0.1, signatures checked)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import boto3
import httpx
import numpy as np
import pytest
from PIL import Image

from serving.config import S3Config, config_from_dict
from serving.errors import ConfigError, ServiceUnavailableError, to_api_error
from serving.preprocess.catalog import ImageCatalog, image_key
from serving.preprocess.decode import decode_image
from serving.storage.s3 import S3ObjectStore
from tests.images import encode, photo
from tests.s3_server import ACCESS_KEY, SECRET_KEY, WeedServer

LIMITS = dict(min_pixels=3136, max_pixels=200704, max_source_pixels=64_000_000,
              allowed_formats=["JPEG", "PNG", "WEBP", "GIF", "BMP"])


@pytest.fixture
def store(s3_server):
    return S3ObjectStore(S3Config(**s3_server.s3_config(multipart_threshold_mib=5,
                                                        multipart_chunk_mib=5)))


def raw_client(server):
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def test_put_get_head_delete(store):
    store.put("t/one", b"hello", content_type="text/plain", metadata={"width": "3"})
    assert store.get("t/one") == b"hello"
    info = store.head("t/one")
    assert info.size == 5 and info.content_type == "text/plain" and info.metadata["width"] == "3"
    assert "t/one" in store.list_keys("t/")
    store.delete("t/one")
    assert store.head("t/one") is None


def test_image_stored_once_content_addressed(store, s3_server):
    catalog = ImageCatalog(store)
    data = encode(photo(320, 240, seed=5), "JPEG")
    image = decode_image(data, **LIMITS)
    first = catalog.put_image(data, image)
    second = catalog.put_image(data, image)
    assert first.sha256 == second.sha256 == hashlib.sha256(data).hexdigest()
    assert (first.width, first.height, first.format) == (320, 240, "JPEG")
    key = image_key(first.sha256)
    assert key == f"images/sha256/{first.sha256[:2]}/{first.sha256}"
    versions = raw_client(s3_server).list_objects_v2(Bucket="qvq-test", Prefix=key)
    assert versions["KeyCount"] == 1
    assert store.get(key) == data
    assert store.head(key).content_type == "image/jpeg"


def test_preprocessed_tier_roundtrip(store):
    catalog = ImageCatalog(store)
    image = decode_image(encode(photo(640, 480, seed=6), "PNG"), **LIMITS)
    catalog.put_preprocessed(image, 3136, 200704)
    back = catalog.get_preprocessed(image.sha256, 3136, 200704)
    assert back is not None and back.cache == "store"
    assert np.array_equal(back.pixels, image.pixels)
    assert catalog.get_preprocessed(image.sha256, 3136, 100352) is None  # other bounds: miss


def test_multipart_upload_of_large_image(store, s3_server):
    rng = np.random.default_rng(0)
    big = encode(Image.fromarray(rng.integers(0, 256, (2400, 3200, 3), dtype=np.uint8)), "PNG")
    assert len(big) > 12 * 2**20
    store.put("t/big.png", big, content_type="image/png")
    head = raw_client(s3_server).head_object(Bucket="qvq-test", Key="t/big.png")
    assert head["ETag"].strip('"').endswith(tuple(f"-{n}" for n in range(2, 10)))  # multipart
    assert hashlib.sha256(store.get("t/big.png")).digest() == hashlib.sha256(big).digest()


def test_presigned_put_writes_that_key_only(store):
    upload = store.presign_put("t/uploaded", 60, "image/png")
    assert upload.url.startswith("http://127.0.0.1:")
    resp = httpx.put(upload.url, content=b"new bytes", headers=upload.headers)
    assert resp.status_code == 200, resp.text
    assert store.get("t/uploaded") == b"new bytes"
    tampered = httpx.put(upload.url.replace("uploaded", "other"), content=b"x",
                         headers=upload.headers)
    assert tampered.status_code == 403
    assert store.head("t/other") is None


def test_wrong_credentials_are_a_clear_config_error(s3_server, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\n"
                     "aws_secret_access_key = not-the-secret\n")
    store = S3ObjectStore(S3Config(**s3_server.s3_config(credentials_file=str(creds))))
    with pytest.raises(ConfigError, match="credentials were rejected"):
        store.check()
    with pytest.raises(ConfigError, match="does not exist"):
        S3ObjectStore(S3Config(**s3_server.s3_config(bucket="no-such-bucket"))).check()


def test_credentials_file_profile(s3_server, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(f"[qvq]\naws_access_key_id = {ACCESS_KEY}\n"
                     f"aws_secret_access_key = {SECRET_KEY}\n")
    store = S3ObjectStore(S3Config(**s3_server.s3_config(credentials_file=str(creds),
                                                         profile="qvq")))
    store.check()
    with pytest.raises(ConfigError, match=r"no \[other\] section"):
        S3ObjectStore(S3Config(**s3_server.s3_config(credentials_file=str(creds),
                                                     profile="other")))


def test_server_down_is_503_and_nothing_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    server = WeedServer(tmp_path / "data", buckets=("qvq-down",)).start()
    try:
        config = config_from_dict({"model": {"path": "m"}, "storage": {
            "backend": "s3", "s3": server.s3_config(multipart_threshold_mib=5,
                                                    multipart_chunk_mib=5)}}, environ={})
        from serving.preprocess.preprocessor import ImagePreprocessor

        pre = ImagePreprocessor(config)  # checks the store at startup
        data = encode(photo(400, 300, seed=11), "JPEG")
        server.stop()
        with pytest.raises(ServiceUnavailableError, match="object store is unreachable") as info:
            asyncio.run(pre.upload(data))
        assert to_api_error(info.value).status_code == 503
        store = S3ObjectStore(config.storage.s3)
        with pytest.raises(ServiceUnavailableError):
            store.put("t/large", os.urandom(12 * 2**20))
        server.start()
        sha = hashlib.sha256(data).hexdigest()
        assert store.head(image_key(sha)) is None
        assert store.head("t/large") is None
        assert store.list_keys("") == []
        record = asyncio.run(pre.upload(data))  # recovers without a restart
        assert record["sha256"] == sha and store.head(image_key(sha)) is not None
    finally:
        server.stop()
