"""ChatFrontend logic with recording stand-ins for the deployment handles (no Ray, no engine):
dispatch, key-id propagation, image stripping and the checks done before any hop."""

import asyncio

import pytest

from serving.config import config_from_dict
from serving.errors import BlockedURLError, ImageError, ModelNotFoundError
from serving.protocol import ChatCompletionRequest, GenerationEvent
from tests.images import png_url


class _Method:
    def __init__(self, result, calls, name):
        self._result, self._calls, self._name = result, calls, name

    def remote(self, *args):
        self._calls.append((self._name, args))
        return _Pending(self._result)


class _Pending:
    """Awaitable like a DeploymentResponse; leaving it unawaited is fine, as in Serve."""

    def __init__(self, result):
        self.result = result

    def __await__(self):
        yield from ()
        return self.result


class _Handle:
    def __init__(self, **results):
        self.calls: list = []
        self._results = results

    def __getattr__(self, name):
        return _Method(self._results.get(name), self.calls, name)

    def options(self, **_):
        return self


@pytest.fixture
def frontend():
    from serving.router import ChatFrontend

    config = config_from_dict({"model": {"path": "m", "served_name": "qvq"},
                               "image": {"max_images_per_request": 2}}, environ={})
    final = GenerationEvent("final", text="answer", prompt_tokens=10, completion_tokens=3,
                            finish_reason="stop")
    pre, gen = _Handle(prepare="PREPARED"), _Handle(complete=final)
    return ChatFrontend(config, pre, gen), pre, gen


def chat(content, model="qvq"):
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": content}]})


def test_text_only_goes_straight_to_generator(frontend):
    fe, pre, gen = frontend
    result, _ = asyncio.run(fe.complete(chat("hi"), key_id="team-a"))
    assert pre.calls == []
    (name, (request, images)), = gen.calls
    assert name == "complete" and images == [] and request.key_id == "team-a"
    assert result.choices[0].message.content == "answer"
    assert result.usage.total_tokens == 13


def test_images_go_through_preprocessor_and_data_stays_behind(frontend):
    fe, pre, gen = frontend
    url = png_url()
    asyncio.run(fe.complete(chat([{"type": "image_url", "image_url": url},
                                  {"type": "text", "text": "what?"}]), key_id=None))
    assert pre.calls[0] == ("prepare", ([url],))
    (_, (request, images)), = gen.calls
    assert request.chat.image_urls() == ["image:0"]
    assert images is not None  # the preprocessor's pending result, passed through unresolved


@pytest.mark.parametrize("content,error", [
    ([{"type": "image_url", "image_url": png_url()}] * 3, ImageError),
    ([{"type": "image_url", "image_url": "file:///etc/passwd"}], BlockedURLError),
])
def test_rejected_before_any_hop(frontend, content, error):
    fe, pre, gen = frontend
    with pytest.raises(error):
        asyncio.run(fe.complete(chat(content), key_id=None))
    assert pre.calls == [] and gen.calls == []


def test_unknown_model(frontend):
    fe, _, gen = frontend
    with pytest.raises(ModelNotFoundError, match="'gpt-4o' does not exist"):
        asyncio.run(fe.complete(chat("hi", model="gpt-4o"), key_id=None))
    assert gen.calls == []
