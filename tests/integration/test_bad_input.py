"""Every bad input gets a clear OpenAI error with the right status, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image

from tests.images import data_url, encode, photo, png_url
from tests.integration.test_chat import MODEL, chat_body, image_content

TRUNCATED_JPEG = encode(photo(640, 480), "JPEG")[:4000]
BOMB_PNG = encode(Image.new("L", (8000, 8000), 0), "PNG")  # 64 Mpx in ~60 KB
BIG_JPEG = encode(photo(2000, 1500, seed=9), "JPEG", quality=100)  # over the 1 MiB test limit


def image_case(url):
    return chat_body(image_content(url))


CASES = {
    "malformed-json": (b'{"model": "qvq-72b-preview", "messages": [', 400, None, "not valid JSON"),
    "schema-missing-messages": ({"model": MODEL}, 400, "messages", "missing"),
    "schema-bad-type": (chat_body("hi", max_tokens="many"), 400, "max_tokens", "max_tokens"),
    "unknown-parameter": (chat_body("hi", best_of=3), 400, "best_of", "unknown parameter"),
    "unknown-model": ({**chat_body("hi"), "model": "gpt-4o"}, 404, "model", "does not exist"),
    "unsupported-part": (chat_body([{"type": "input_audio", "input_audio": {"data": "AA"}}]),
                         400, None, "unsupported content part type 'input_audio'"),
    "bad-base64": (image_case("data:image/png;base64,!!!not-base64!!!"), 400, None,
                   "not valid base64"),
    "bad-data-url": (image_case("data:image/png;base64"), 400, None, "no ','"),
    "data-url-not-image-type": (image_case("data:text/plain;base64,aGk="), 400, None,
                                "not an image type"),
    "empty-image": (image_case("data:image/png;base64,"), 400, None, "image is empty"),
    "not-an-image": (image_case(data_url(b"plain text, not pixels")), 400, None,
                     "not a decodable image"),
    "truncated-image": (image_case(data_url(TRUNCATED_JPEG, "image/jpeg")), 400, None,
                        "truncated or corrupt"),
    "wrong-format": (image_case(data_url(b"II*\x00" + bytes(200), "image/tiff")), 400, None,
                     "TIFF is not supported"),
    "over-byte-limit": (image_case(data_url(BIG_JPEG, "image/jpeg")), 413, None, "limit"),
    "decompression-bomb": (image_case(data_url(BOMB_PNG)), 400, None, "pixel limit"),
    "too-many-images": (chat_body(image_content(*[png_url()] * 5)), 400, "messages",
                        "at most 4"),
    "context-too-long": (chat_body("hi", max_tokens=5000), 400, "max_tokens",
                         "maximum context length"),
    "file-scheme": (image_case("file:///etc/passwd"), 400, None, "scheme"),
    "ftp-scheme": (image_case("ftp://127.0.0.1/x.png"), 400, None, "scheme"),
    "n-above-the-ceiling": (chat_body("hi", n=9), 400, "n", "at most 8 choices"),
}

FETCH_CASES = {
    "fetch-404": ("/missing.png", 400, "HTTP 404"),
    "fetch-timeout": ("/slow", 400, "timed out"),
    "fetch-not-image": ("/text.txt", 400, "not a decodable image"),
    "fetch-over-limit": ("/big.bin", 413, "limit"),
    "fetch-redirect-to-blocked": ("/redirect-out", 400, "loopback"),
    "fetch-redirect-loop": ("/redirect-loop", 400, "redirected more than"),
}


def good_request_succeeds(client):
    resp = client.post("/v1/chat/completions", json=chat_body(image_content(png_url()),
                                                              max_tokens=2))
    assert resp.status_code == 200, resp.text


def assert_openai_error(resp, status, param, fragment):
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error
    assert "Traceback" not in error["message"] and "/work/" not in error["message"]
    if param is not None:
        assert error["param"] == param, error


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_then_good(client, name):
    body, status, param, fragment = CASES[name]
    if isinstance(body, bytes):
        resp = client.post("/v1/chat/completions", content=body,
                           headers={"Content-Type": "application/json"})
    else:
        resp = client.post("/v1/chat/completions", json=body)
    assert_openai_error(resp, status, param, fragment)
    good_request_succeeds(client)


@pytest.mark.parametrize("name", list(FETCH_CASES))
def test_bad_fetch_then_good(client, image_base_url, name):
    path, status, fragment = FETCH_CASES[name]
    resp = client.post("/v1/chat/completions",
                       json=image_case(image_base_url + path))
    assert_openai_error(resp, status, None, fragment)
    good_request_succeeds(client)


def test_loopback_outside_allowlist_blocked(client, image_base_url):
    port = image_base_url.rsplit(":", 1)[1]
    resp = client.post("/v1/chat/completions",
                       json=image_case(f"http://127.0.0.2:{port}/img.png"))
    assert_openai_error(resp, 400, None, "loopback")
    resp = client.post("/v1/chat/completions",
                       json=image_case(f"http://2130706434:{port}/img.png"))  # 127.0.0.2
    assert_openai_error(resp, 400, None, "loopback")


def test_streaming_request_errors_before_headers(client):
    body = chat_body(image_content("data:image/png;base64,!!!"), stream=True)
    resp = client.post("/v1/chat/completions", json=body)
    assert_openai_error(resp, 400, None, "not valid base64")
    body = chat_body("hi", stream=True, max_tokens=5000)
    assert_openai_error(client.post("/v1/chat/completions", json=body), 400, "max_tokens",
                        "maximum context length")


def test_openai_client_sees_typed_errors(openai_client):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(
            model=MODEL, max_tokens=4,
            messages=[{"role": "user", "content": image_content("data:image/png;base64,@@")}])
    assert "base64" in info.value.message
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nope", max_tokens=4,
                                              messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("headers,fragment", [
    ({}, "Missing API key"),
    ({"Authorization": "Bearer sk-wrong"}, "Incorrect API key"),
    ({"Authorization": "Token sk-test-integration"}, "Malformed"),
])
def test_auth_required_on_v1(server, headers, fragment):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        resp = httpx.request(method, server["base"] + path, headers=headers,
                             json=chat_body("hi"), timeout=30)
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"
        assert fragment in resp.json()["error"]["message"]
    assert httpx.get(server["base"] + "/health", timeout=30).status_code == 200


def test_second_key_works(server):
    from tests.integration.conftest import OTHER_KEY

    resp = httpx.get(server["base"] + "/v1/models", timeout=30,
                     headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert resp.status_code == 200


def test_unknown_route_and_method(client):
    resp = client.get("/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = client.get("/v1/chat/completions")
    assert resp.status_code == 405 and "error" in resp.json()


def test_server_healthy_after_everything(client, server):
    assert httpx.get(server["base"] + "/health", timeout=30).json() == {"status": "ok"}
    good_request_succeeds(client)
