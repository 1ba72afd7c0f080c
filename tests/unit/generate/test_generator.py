"""QVQGenerator's orchestration of reasoning operations, with a scripted engine standing in for
vLLM (what the engine generates does not matter here; integration tests run the real one):
the loop guard aborts the engine's stream, the thinking budget starts a second pass whose prompt
is the first pass plus the cue, and complete() and stream() agree."""

from __future__ import annotations

import asyncio

import pytest

from serving.api.validation import validate_chat
from serving.config import config_from_dict
from serving.generate.engine.protocol import EngineStep
from serving.generate.generator import QVQGenerator
from serving.messages import GenerationRequest
from serving.protocol import ChatCompletionRequest


class ScriptedEngine:
    """Plays back a script per pass: a list of (text, token ids) steps; records every call."""

    def __init__(self, passes: list[list[tuple[str, list[int]]]]):
        self.passes = list(passes)
        self.calls: list[dict] = []
        self.closed: list[str] = []

    async def generate(self, prompt_token_ids, images, options, request_id, priority=0):
        self.calls.append({"prompt": list(prompt_token_ids), "max_tokens": options.max_tokens,
                           "request_id": request_id})
        script = self.passes.pop(0)[:options.max_tokens]
        done = 0
        try:
            for i, (text, ids) in enumerate(script):
                done += len(ids)
                last = i == len(script) - 1
                reason = ("length" if done >= options.max_tokens else "stop") if last else None
                yield EngineStep(text=text, prompt_tokens=len(prompt_token_ids),
                                 completion_tokens=done, finish_reason=reason,
                                 token_ids=tuple(ids))
                await asyncio.sleep(0)
        finally:
            if done < sum(len(ids) for _, ids in script) or not script:
                self.closed.append(request_id)

    async def check_health(self):
        pass

    def shutdown(self):
        pass


def make(tiny_model_dir, passes, **reasoning):
    config = config_from_dict({"model": {"path": str(tiny_model_dir), "max_model_len": 4096},
                               "reasoning": reasoning}, environ={})
    engine = ScriptedEngine(passes)
    return QVQGenerator(config, engine_factory=lambda _: engine), engine


def sampling_options_of(engine: ScriptedEngine) -> list:
    """The SamplingOptions of every engine call from now on."""
    seen: list = []
    generate = engine.generate

    def spy(prompt, images, options, request_id, priority=0):
        seen.append(options)
        return generate(prompt, images, options, request_id, priority)

    engine.generate = spy
    return seen


def request(gen, **fields) -> GenerationRequest:
    """Validated as the chat endpoint does, with the generator's config."""
    chat = ChatCompletionRequest(model="qvq-72b-preview",
                                 messages=[{"role": "user", "content": "count"}], **fields)
    return validate_chat(gen._config, chat, None, request_id="chatcmpl-test")


async def collect(gen, req):
    return [event async for batch in gen.stream(req, []) for event in batch]


def test_loop_stop_aborts_the_engine_and_keeps_the_reasoning(tiny_model_dir):
    gen, engine = make(tiny_model_dir, [])
    a, b = [i for i in range(300, 400) if i not in gen._filler_ids][:2]  # word tokens
    engine.passes.append([("Start. ", [5, 6])] + [("ab ", [a, b])] * 400)
    final = asyncio.run(gen.complete(request(gen, split_reasoning=True, max_tokens=2000), []))
    assert engine.closed == ["chatcmpl-test"]  # the stream was closed early: vLLM aborts
    assert final.finish_reason == "length" and final.stop_reason == "loop_detected"
    assert final.completion_tokens < 200
    # no final-answer marker: in complete(), everything is content
    assert final.text.startswith("Start. ab ab") and final.reasoning == ""
    report = final.report()
    assert report["loop"]["action"] == "stopped" and report["loop"]["period"] == 2
    assert not report["final_answer_found"]


def test_budget_runs_a_conclude_pass_after_the_cue(tiny_model_dir):
    thinking = [(f"step{i} ", [100 + i]) for i in range(50)]
    answer = [("It is ", [7]), ("5.", [8])]
    gen, engine = make(tiny_model_dir, [thinking, answer], answer_budget_tokens=64)
    events = asyncio.run(collect(gen, request(gen, split_reasoning=True, max_reasoning_tokens=20,
                                              max_tokens=1000)))
    first, second = engine.calls
    cue_ids = list(gen._cue_ids)
    assert engine.closed == ["chatcmpl-test"]
    assert second["request_id"] == "chatcmpl-test-conclude"
    assert second["prompt"] == first["prompt"] + [100 + i for i in range(20)] + cue_ids
    assert second["max_tokens"] == 64
    final = events[-1]
    reasoning = "".join(e.reasoning for e in events)
    content = "".join(e.text for e in events)
    assert reasoning.split() == [f"step{i}" for i in range(20)]
    assert content == "It is 5."
    assert final.finish_reason == "stop" and final.outcome.thinking_budget_exhausted
    assert final.outcome.reasoning_tokens == 20
    assert final.completion_tokens == 20 + len(cue_ids) + 2


def test_conclude_pass_fits_what_is_left_of_max_tokens(tiny_model_dir):
    thinking = [(f"w{i} ", [100 + i]) for i in range(50)]
    gen, engine = make(tiny_model_dir, [thinking, [("x", [9])] * 100], answer_budget_tokens=512)
    final = asyncio.run(gen.complete(request(gen, max_reasoning_tokens=30, max_tokens=40), []))
    room = 40 - 30 - len(gen._cue_ids)
    assert engine.calls[1]["max_tokens"] == room
    assert final.finish_reason == "length" and final.completion_tokens == 40
    assert "**Final Answer**" in final.text  # unsplit: the cue is part of the content


def test_stream_and_complete_agree(tiny_model_dir):
    script = [("Look.\n", [1]), ("**Final Answer**", [2]), ("\n\n\\boxed{3}", [3])]
    gen, _ = make(tiny_model_dir, [script, script])
    final = asyncio.run(gen.complete(request(gen, split_reasoning=True), []))
    events = asyncio.run(collect(gen, request(gen, split_reasoning=True)))
    assert (final.reasoning, final.text) == ("Look.\n", "\\boxed{3}")
    assert "".join(e.reasoning for e in events) == final.reasoning
    assert "".join(e.text for e in events) == final.text
    assert events[-1].report() == final.report()
    assert final.report()["boxed"] == ["3"] and final.outcome.reasoning_tokens == 2


def test_out_of_bounds_budget_is_refused_at_the_edge(tiny_model_dir):
    from serving.errors import InvalidRequestError

    gen, engine = make(tiny_model_dir, [[]], max_reasoning_tokens_ceiling=100)
    with pytest.raises(InvalidRequestError, match="max_reasoning_tokens"):
        request(gen, max_reasoning_tokens=101)  # validate_chat: no request, no engine call
    assert engine.calls == []


def test_sampling_extensions_reach_the_engine(tiny_model_dir):
    gen, engine = make(tiny_model_dir, [[("a", [1])]])
    seen = sampling_options_of(engine)
    asyncio.run(gen.complete(request(gen, max_tokens=8, min_tokens=3, ignore_eos=True,
                                     logit_bias={"7": 100, "9": -50.5}, top_k=20, min_p=0.05,
                                     repetition_penalty=1.1, stop_token_ids=[5, 6],
                                     include_stop_str_in_output=True,
                                     skip_special_tokens=False,
                                     spaces_between_special_tokens=False), []))
    assert (seen[0].min_tokens, seen[0].ignore_eos) == (3, True)
    assert seen[0].logit_bias == ((7, 100.0), (9, -50.5))
    assert (seen[0].top_k, seen[0].min_p, seen[0].repetition_penalty) == (20, 0.05, 1.1)
    assert seen[0].stop_token_ids == (5, 6) and seen[0].include_stop_str_in_output
    assert not seen[0].skip_special_tokens and not seen[0].spaces_between_special_tokens


def test_stop_token_ids_outside_the_vocabulary_are_refused(tiny_model_dir):
    from serving.errors import InvalidRequestError

    gen, engine = make(tiny_model_dir, [[]])
    vocab = len(gen._tokenizer)
    with pytest.raises(InvalidRequestError, match=f"ids 0 to {vocab - 1}") as exc:
        asyncio.run(gen.complete(request(gen, stop_token_ids=[1, vocab]), []))
    assert exc.value.param == "stop_token_ids" and engine.calls == []


def test_logit_bias_outside_the_vocabulary_is_refused_before_acceptance(tiny_model_dir):
    from serving.errors import InvalidRequestError

    gen, engine = make(tiny_model_dir, [[]])
    vocab = len(gen._tokenizer)
    batches = gen.stream(request(gen, logit_bias={str(vocab): 5}), [])
    with pytest.raises(InvalidRequestError, match=f"ids 0 to {vocab - 1}") as exc:
        asyncio.run(batches.__anext__())  # the first batch: no "accepted" before the error
    assert exc.value.param == "logit_bias" and engine.calls == []


def test_min_tokens_above_the_granted_budget_is_a_400(tiny_model_dir):
    from serving.errors import InvalidRequestError

    gen, engine = make(tiny_model_dir, [[]])
    with pytest.raises(InvalidRequestError, match="min_tokens") as exc:
        asyncio.run(gen.complete(request(gen, min_tokens=10**6), []))
    assert exc.value.param == "min_tokens" and engine.calls == []


def test_conclude_pass_keeps_what_is_left_of_min_tokens(tiny_model_dir):
    thinking = [(f"w{i} ", [100 + i]) for i in range(50)]
    gen, engine = make(tiny_model_dir, [thinking, [("x", [9])] * 100], answer_budget_tokens=64)
    seen = sampling_options_of(engine)
    asyncio.run(gen.complete(request(gen, max_reasoning_tokens=20, max_tokens=400,
                                     min_tokens=30), []))
    assert [o.min_tokens for o in seen] == [30, 30 - 20 - len(gen._cue_ids)]
