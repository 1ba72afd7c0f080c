"""ChatEndpoint with recording stand-ins for the deployment handles (no Ray, no engine):
dispatch through the generator's handle (chat_entry router), key-id propagation, image
stripping, the checks done before any hop, the SSE framing of a streamed answer that arrives in
batches; and the same endpoint generating in-process (chat_entry generator) with a scripted
engine."""

import asyncio
import json

import pytest

from serving.config import config_from_dict
from serving.errors import BlockedURLError, ImageError, ModelNotFoundError
from serving.messages import LIVE_PRIORITY, Completion, GenerationEvent
from serving.protocol import ChatCompletionRequest
from tests.images import png_url
from tests.unit.api.handles import Handle, Pending, Stream


def endpoint(config, pre, gen):
    from serving.api.chat import ChatEndpoint, RemoteGeneration

    return ChatEndpoint(config, RemoteGeneration(gen, pre, retries=0))


@pytest.fixture
def frontend():
    config = config_from_dict({"model": {"path": "m", "served_name": "qvq"},
                               "image": {"max_images_per_request": 2}}, environ={})
    final = GenerationEvent("final", text="answer", prompt_tokens=10, completion_tokens=3,
                            finish_reason="stop")
    pre, gen = Handle(prepare="PREPARED"), Handle(complete=Completion((final,)))
    return endpoint(config, pre, gen), pre, gen


def chat(content, model="qvq"):
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": content}]})


def test_text_only_goes_straight_to_generator(frontend):
    fe, pre, gen = frontend
    result, _ = asyncio.run(fe.complete(chat("hi"), key_id="team-a"))
    assert pre.calls == []
    (name, (request, images, priority)), = gen.calls
    assert name == "complete" and images == [] and request.key_id == "team-a"
    assert priority == LIVE_PRIORITY
    assert request.reasoning.loop_guard == "stop"  # resolved once here, for this caller
    assert result.choices[0].message.content == "answer"
    assert result.usage.total_tokens == 13


def test_images_go_through_preprocessor_and_data_stays_behind(frontend):
    fe, pre, gen = frontend
    url = png_url()
    asyncio.run(fe.complete(chat([{"type": "image_url", "image_url": url},
                                  {"type": "text", "text": "what?"}]), key_id=None))
    (name, (sources,)), = pre.calls
    assert name == "prepare" and [(s.kind, s.url) for s in sources] == [("data", url)]
    (_, (request, images, _)), = gen.calls
    assert request.images == tuple(sources)
    assert request.chat.image_urls() == ["image:0"]
    # the preprocessor's pending answer goes into the generator call unresolved: the pixels
    # travel preprocessor -> generator, never through this process
    assert isinstance(images, Pending) and images.result == "PREPARED"


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


def _events(body: list[bytes]) -> list:
    text = b"".join(body).decode()
    assert text.endswith("data: [DONE]\n\n")
    return [json.loads(part[len("data: "):]) for part in text.split("\n\n")
            if part.startswith("data: {")]


def _stream_through(batches, **fields):
    config = config_from_dict({"model": {"path": "m", "served_name": "qvq"}}, environ={})
    stream = Stream(batches)
    fe = endpoint(config, Handle(), Handle(stream=stream))
    request = ChatCompletionRequest.model_validate(
        {"model": "qvq", "messages": [{"role": "user", "content": "hi"}], "stream": True,
         **fields})

    async def run():
        body, accepted = await fe.open_stream(request, key_id=None)
        return accepted, [chunk async for chunk in body]

    accepted, body = asyncio.run(run())
    return accepted, body, stream, fe


def test_a_batched_stream_becomes_one_chunk_per_text_batch_in_order():
    final = GenerationEvent("final", prompt_tokens=4, completion_tokens=5,
                            finish_reason="length")
    batches = [(GenerationEvent("accepted", prompt_tokens=4), GenerationEvent(
                    "delta", reasoning="Let me ")),
               (GenerationEvent("delta", reasoning="look. \"ok\"\n"),),
               (GenerationEvent("delta", text="五 apples</s>"), final)]
    accepted, body, stream, fe = _stream_through(
        batches, stream_options={"include_usage": True})
    assert accepted.kind == "accepted"
    events = _events(body)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [e["choices"][0]["delta"] for e in events[1:4]]
    assert deltas == [{"reasoning_content": "Let me "},
                      {"reasoning_content": "look. \"ok\"\n"}, {"content": "五 apples</s>"}]
    assert events[4]["choices"][0]["finish_reason"] == "length"
    assert events[5]["choices"] == [] and events[5]["usage"]["total_tokens"] == 9
    assert {e["id"] for e in events} == {events[0]["id"]} and stream.cancelled
    assert fe.gate.in_flight == 0  # the admission slot is given back


def test_a_stream_that_fails_mid_way_ends_with_an_error_event_then_done():
    from serving.errors import ServiceUnavailableError

    batches = [(GenerationEvent("accepted"),), (GenerationEvent("delta", text="partial"),),
               ServiceUnavailableError("The generation engine failed; retry shortly.")]
    _, body, stream, fe = _stream_through(batches)
    events = _events(body)
    assert events[1]["choices"][0]["delta"] == {"content": "partial"}
    assert events[-1]["error"]["type"] == "service_unavailable"
    assert stream.cancelled and fe.gate.in_flight == 0


@pytest.mark.parametrize("content,reasoning", [
    ("plain", ""), ("", "thinking"), ("both", "kinds"), ('quote " slash / \\ tab\t', ""),
    ("汉字 and émoji 🍎", ""), ("\u0000\u001f control", "")])
def test_rendered_text_chunks_equal_the_models(content, reasoning):
    from serving.api.chat import ChunkRenderer
    from serving.protocol import ChatCompletionChunk, ChunkChoice, Delta

    rendered = ChunkRenderer("chatcmpl-1", 1700000000, "qvq").delta(content, reasoning)
    model = ChatCompletionChunk(
        id="chatcmpl-1", created=1700000000, model="qvq",
        choices=[ChunkChoice(delta=Delta(content=content or None,
                                         reasoning_content=reasoning or None))])
    expected = b"data: " + model.model_dump_json(exclude_none=True).encode() + b"\n\n"
    assert json.loads(rendered[6:]) == json.loads(expected[6:])
    assert rendered.endswith(b"\n\n")


class _FlakyPrepare:
    """A preprocessor handle whose replica dies under the first call, then answers."""

    def __init__(self, images):
        self.images, self.calls = images, 0

    @property
    def prepare(self):
        return self

    def remote(self, urls):
        self.calls += 1
        if self.calls == 1:
            from ray.exceptions import RayActorError

            async def dead():
                raise RayActorError()
            return dead()
        return Pending(self.images)


def test_generating_in_process_streams_the_engine_steps_as_chunks(tiny_model_dir):
    """chat_entry generator: the endpoint runs in the generator replica, images come from
    the preprocessor (sent again when its replica died), each engine step is one chunk."""
    import numpy as np

    from serving.api.chat import ChatEndpoint, LocalGeneration
    from serving.messages import PreparedImage
    from tests.unit.generate.test_generator import make

    gen, engine = make(tiny_model_dir, [[("Two ", [5]), ("apples.", [6])]])
    image = PreparedImage(np.zeros((28, 28, 3), dtype=np.uint8), 28, 28, "PNG", "0" * 64)
    pre = _FlakyPrepare([image])
    chat_endpoint = ChatEndpoint(gen._config, LocalGeneration(gen, pre, retries=1))
    request = ChatCompletionRequest.model_validate(
        {"model": "qvq-72b-preview", "stream": True, "max_tokens": 8,
         "messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": png_url()}, {"type": "text", "text": "?"}]}]})

    async def run():
        body, accepted = await chat_endpoint.open_stream(request, key_id=None)
        return accepted, [chunk async for chunk in body]

    accepted, body = asyncio.run(run())
    assert accepted.kind == "accepted" and accepted.image_cache == ("miss",)
    assert pre.calls == 2  # the first preprocessor replica died: sent again
    deltas = [e["choices"][0]["delta"] for e in _events(body)[1:-1]]
    assert deltas == [{"content": "Two "}, {"content": "apples."}]
    assert engine.calls[0]["prompt"]  # the engine ran here, with the image's placeholder
    assert chat_endpoint.gate.in_flight == 0 and gen._in_flight["live"] == 0


def test_a_client_that_goes_away_aborts_the_engine_request(tiny_model_dir):
    """Closing the SSE body (what Starlette does when the client disconnects) closes the
    engine's stream, which is how vLLM aborts the request, and frees the admission slot."""
    from serving.api.chat import ChatEndpoint, LocalGeneration
    from tests.unit.generate.test_generator import make

    gen, engine = make(tiny_model_dir, [[(f"w{i} ", [100 + i]) for i in range(200)]])
    chat_endpoint = ChatEndpoint(gen._config, LocalGeneration(gen, Handle(), retries=0))
    request = ChatCompletionRequest.model_validate(
        {"model": "qvq-72b-preview", "stream": True, "max_tokens": 500,
         "messages": [{"role": "user", "content": "count"}]})

    async def run():
        body, _ = await chat_endpoint.open_stream(request, key_id=None)
        got = [await body.__anext__() for _ in range(3)]  # role chunk and two text chunks
        await body.aclose()
        return got

    got = asyncio.run(run())
    assert b'"content":"w0 "' in got[1] and b'"content":"w1 "' in got[2]
    assert len(engine.closed) == 1  # the engine stream was closed before its end
    assert chat_endpoint.gate.in_flight == 0 and gen._in_flight["live"] == 0
