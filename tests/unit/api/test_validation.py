"""validate_chat's image part: each image's pixel bounds resolved once, at the edge."""

import pytest

from serving.api.validation import image_url_parts, validate_chat
from serving.config import config_from_dict
from serving.errors import InvalidRequestError
from serving.protocol import ChatCompletionRequest

CONFIG = config_from_dict({"model": {"path": "/models/x", "served_name": "qvq"},
                           "image": {"min_pixels": 3136, "max_pixels": 200704,
                                     "detail_max_pixels": {"low": 12544}}}, environ={})


def chat(*image_urls):
    return ChatCompletionRequest.model_validate({"model": "qvq", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "compare"},
                                     *({"type": "image_url", "image_url": u}
                                       for u in image_urls)]}]})


def test_image_url_parts_are_located_by_their_param_path():
    request = chat("https://x/a.png", {"url": "https://x/b.png", "detail": "low"})
    assert [(param, url.url) for param, url in image_url_parts(request)] == [
        ("messages[2].content[1].image_url", "https://x/a.png"),
        ("messages[2].content[2].image_url", "https://x/b.png")]


def test_each_image_goes_to_the_preprocessor_with_its_own_bounds():
    request = validate_chat(CONFIG, chat(
        "https://x/a.png", {"url": "https://x/a.png", "detail": "low"},
        {"url": "https://x/a.png", "detail": "low", "max_pixels": 50176}), key_id=None)
    assert [(s.min_pixels, s.max_pixels) for s in request.images] == [
        (3136, 200704), (3136, 12544), (3136, 50176)]


def test_bound_outside_the_deployments_is_a_400_naming_the_param():
    with pytest.raises(InvalidRequestError) as info:
        validate_chat(CONFIG, chat("https://x/a.png",
                                   {"url": "https://x/b.png", "max_pixels": 200705}), None)
    assert info.value.status_code == 400
    assert info.value.param == "messages[2].content[2].image_url.max_pixels"
    assert "between 3136 and 200704 pixels" in info.value.message
