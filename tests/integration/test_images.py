"""Image store, upload API, s3:// and qvq-image:// sources and the preprocessed-image cache,
through the real stack with the S3 backend (SeaweedFS)."""

from __future__ import annotations

import hashlib
import io

import boto3
import httpx
import numpy as np
import pytest
from botocore.config import Config
from PIL import Image

from serving.config import ImageConfig
from serving.preprocess.catalog import image_key
from serving.preprocess.geometry import budgeted_resize, visual_tokens
from tests.images import data_url, encode, photo
from tests.integration.test_chat import MODEL, chat_body, image_content
from tests.s3_server import ACCESS_KEY, SECRET_KEY


def s3(server):
    return boto3.client("s3", endpoint_url=server["s3"].endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def fresh_jpeg(seed: int, size=(480, 360)) -> bytes:
    return encode(photo(*size, seed=seed), "JPEG")


def chat_with(client, *urls, max_tokens=2):
    return client.post("/v1/chat/completions",
                       json=chat_body(image_content(*urls), max_tokens=max_tokens))


def test_upload_raw_and_multipart_dedup(client, server):
    data = fresh_jpeg(101)
    sha = hashlib.sha256(data).hexdigest()
    raw = client.post("/v1/images", content=data, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    record = raw.json()
    assert record["id"] == f"img-{sha}" and record["sha256"] == sha
    assert (record["width"], record["height"], record["bytes"]) == (480, 360, len(data))
    assert record["content_type"] == "image/jpeg" and record["url"] == f"qvq-image://{sha}"
    form = client.post("/v1/images", files={"file": ("photo.jpg", data, "image/jpeg")})
    assert form.status_code == 200 and form.json()["id"] == record["id"]
    listed = s3(server).list_objects_v2(Bucket="qvq-test", Prefix=image_key(sha))
    assert listed["KeyCount"] == 1
    meta = client.get(f"/v1/images/{record['id']}")
    assert meta.status_code == 200 and meta.json()["sha256"] == sha
    assert client.get(f"/v1/images/{sha}").json()["id"] == record["id"]


def test_unknown_image_id_is_404(client):
    resp = client.get("/v1/images/img-" + "0" * 64)
    assert resp.status_code == 404 and "no image" in resp.json()["error"]["message"]
    assert client.get("/v1/images/nonsense").status_code == 404


def test_uploaded_image_by_reference_hits_cache(client):
    data = fresh_jpeg(102)
    record = client.post("/v1/images", content=data,
                         headers={"Content-Type": "image/jpeg"}).json()
    resp = chat_with(client, record["url"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-qvq-image-cache"] in ("memory", "store")


def test_unknown_reference_is_400(client):
    resp = chat_with(client, "qvq-image://" + "f" * 64)
    assert resp.status_code == 400 and "names no uploaded image" in resp.json()["error"]["message"]
    resp = chat_with(client, "qvq-image://not-a-hash")
    assert resp.status_code == 400 and "qvq-image://<64 hex" in resp.json()["error"]["message"]


def test_same_image_twice_and_repeat_request_skip_decode(client):
    url = data_url(fresh_jpeg(103), "image/jpeg")
    first = chat_with(client, url, url)
    assert first.status_code == 200, first.text
    assert first.headers["x-qvq-image-cache"] == "miss,memory"
    again = chat_with(client, url)
    assert again.headers["x-qvq-image-cache"] == "memory"


def test_detail_and_explicit_bounds_set_the_image_tokens(openai_client, server):
    """The same image at low and high detail, and with an explicit max_pixels: each costs the
    visual tokens of its own grid (geometry.budgeted_resize), cached apart."""
    import openai

    image = ImageConfig(**server["config"]["image"])
    engine = {"engine_min_pixels": image.min_pixels, "engine_max_pixels": image.max_pixels}
    url = data_url(fresh_jpeg(110, size=(640, 480)), "image/jpeg")

    def ask(*content):
        raw = openai_client.chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=1, messages=[{"role": "user", "content": [
                *content, {"type": "text", "text": "Describe."}]}])
        return raw.parse().usage.prompt_tokens, raw.headers.get("x-qvq-image-cache")

    def with_image(**image_url):
        return ask({"type": "image_url", "image_url": {"url": url, **image_url}})

    def expected(min_pixels, max_pixels):
        grid = budgeted_resize(480, 640, min_pixels=min_pixels, max_pixels=max_pixels, **engine)
        return text_only + visual_tokens(*grid) + 2  # + vision start and end tokens

    text_only, _ = ask()
    low, low_cache = with_image(detail="low")
    high, high_cache = with_image(detail="high")
    assert (low_cache, high_cache) == ("miss", "miss")  # one image, two budgets, two entries
    assert low == expected(image.min_pixels, image.detail_ceiling("low"))
    assert high == expected(image.min_pixels, image.detail_ceiling("high"))
    assert low < high
    if image.detail_ceiling("auto") == image.detail_ceiling("high"):  # the default
        assert with_image() == (high, "memory")  # no detail is auto
    capped, _ = with_image(detail="high", max_pixels=64 * 28 * 28)  # explicit wins
    assert capped == expected(image.min_pixels, 64 * 28 * 28) and low < capped < high
    with pytest.raises(openai.BadRequestError) as info:
        with_image(max_pixels=image.max_pixels + 1)
    assert info.value.param == "messages[0].content[0].image_url.max_pixels"
    assert f"between {image.min_pixels} and {image.max_pixels} pixels" in info.value.message


def test_request_images_are_stored_for_replay(client, server):
    data = fresh_jpeg(104)
    assert chat_with(client, data_url(data, "image/jpeg")).status_code == 200
    key = image_key(hashlib.sha256(data).hexdigest())
    for _ in range(50):  # stored in the background, off the request path
        try:
            obj = s3(server).get_object(Bucket="qvq-test", Key=key)
            assert obj["Body"].read() == data
            break
        except s3(server).exceptions.NoSuchKey:
            import time
            time.sleep(0.1)
    else:
        pytest.fail("request image was not stored")


def test_s3_source_urls(client, server):
    data = fresh_jpeg(105)
    s3(server).put_object(Bucket="qvq-sources", Key="cams/1.jpg", Body=data)
    s3(server).put_object(Bucket="qvq-private", Key="secret.jpg", Body=data)
    assert chat_with(client, "s3://qvq-sources/cams/1.jpg").status_code == 200
    blocked = chat_with(client, "s3://qvq-private/secret.jpg")
    assert blocked.status_code == 400
    assert "not one this server may read" in blocked.json()["error"]["message"]
    missing = chat_with(client, "s3://qvq-sources/cams/none.jpg")
    assert missing.status_code == 400 and "does not exist" in missing.json()["error"]["message"]
    assert chat_with(client, "s3://qvq-sources").status_code == 400


def test_presigned_upload_flow(client):
    data = fresh_jpeg(106, size=(1024, 768))
    created = client.post("/v1/images/uploads", json={"content_type": "image/jpeg"})
    assert created.status_code == 200, created.text
    upload = created.json()
    assert upload["upload_url"].startswith("http://127.0.0.1:") and upload["method"] == "PUT"
    put = httpx.put(upload["upload_url"], content=data, headers=upload["headers"])
    assert put.status_code == 200, put.text
    done = client.post(upload["complete_url"])
    assert done.status_code == 200, done.text
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
    again = client.post(upload["complete_url"])  # staging object is gone after completion
    assert again.status_code == 404


def test_upload_errors(client):
    too_big = encode(Image.fromarray(np.random.default_rng(1).integers(
        0, 256, (800, 800, 3), dtype=np.uint8)), "PNG")
    assert len(too_big) > 1_048_576
    resp = client.post("/v1/images", content=too_big, headers={"Content-Type": "image/png"})
    assert resp.status_code == 413 and "presigned upload" in resp.json()["error"]["message"]
    resp = client.post("/v1/images", content=b"hello", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "content-type"
    resp = client.post("/v1/images", files={"other": ("a.png", b"x", "image/png")})
    assert resp.status_code == 400 and "'file' field" in resp.json()["error"]["message"]
    resp = client.post("/v1/images/uploads/upload-zzz/complete")
    assert resp.status_code == 404


def _gif_animated() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], loop=0)
    return buf.getvalue()


def _huge_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 KB EXIF block
    exif[0x0112] = 6
    return encode(photo(200, 100, seed=3), "JPEG", exif=exif)


HOSTILE = {
    "bomb": (lambda: encode(Image.new("L", (8000, 8000), 0), "PNG"), 400, "pixel limit"),
    "truncated": (lambda: encode(photo(640, 480), "JPEG")[:3000], 400, "truncated or corrupt"),
    "zero-bytes": (lambda: b"", 400, "empty"),
    "text-as-png": (lambda: b"<html>not really a png</html>", 400, "not a decodable image"),
    "one-by-10000": (lambda: encode(Image.new("RGB", (1, 10000)), "PNG"), 400, "aspect ratio"),
    "cmyk": (lambda: encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), 200, ""),
    "16-bit": (lambda: encode(Image.fromarray(np.full((64, 64), 40000, np.uint16)), "PNG"),
               200, ""),
    "animated-gif": (_gif_animated, 200, ""),
    "huge-exif": (_huge_exif_jpeg, 200, ""),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_image_corpus(client, server, name):
    make, status, fragment = HOSTILE[name]
    data = make()
    upload = client.post("/v1/images", files={"file": (f"{name}.png", data, "image/png")})
    via_chat = chat_with(client, data_url(data)) if data else chat_with(
        client, "data:image/png;base64,")
    for resp in (upload, via_chat):
        assert resp.status_code == status, (name, resp.text)
        if status != 200:
            assert fragment in resp.json()["error"]["message"], resp.json()
    assert httpx.get(server["base"] + "/health", timeout=30).status_code == 200
