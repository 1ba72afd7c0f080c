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
from serving.messages import GenerationRequest, Logprob
from serving.protocol import ChatCompletionRequest


class ScriptedEngine:
    """Plays back a script per pass: a list of (text, token ids) steps; records every call."""

    def __init__(self, passes: list[list[tuple[str, list[int]]]]):
        self.passes = list(passes)
        self.calls: list[dict] = []
        self.closed: list[str] = []
        self.checked: list = []

    def check(self, options):
        self.checked.append(options)

    async def generate(self, prompt_token_ids, images, options, request_id, priority=0):
        self.calls.append({"prompt": list(prompt_token_ids), "max_tokens": options.max_tokens,
                           "request_id": request_id, "options": options,
                           "priority": priority})
        script = self.passes.pop(0)[:options.max_tokens]
        done = 0
        try:
            for i, (text, ids) in enumerate(script):
                done += len(ids)
                last = i == len(script) - 1
                reason = ("length" if done >= options.max_tokens else "stop") if last else None
                logprobs = () if options.logprobs is None else tuple(
                    Logprob(f"t{token}", -0.5) for token in ids)
                yield EngineStep(text=text, prompt_tokens=len(prompt_token_ids),
                                 completion_tokens=done, finish_reason=reason,
                                 token_ids=tuple(ids), logprobs=logprobs)
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
    final = asyncio.run(gen.complete(request(gen, split_reasoning=True, max_tokens=2000),
                                     [])).choices[0]
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
    final = asyncio.run(gen.complete(request(gen, max_reasoning_tokens=30, max_tokens=40),
                                     [])).choices[0]
    room = 40 - 30 - len(gen._cue_ids)
    assert engine.calls[1]["max_tokens"] == room
    assert final.finish_reason == "length" and final.completion_tokens == 40
    assert "**Final Answer**" in final.text  # unsplit: the cue is part of the content


def test_stream_and_complete_agree(tiny_model_dir):
    script = [("Look.\n", [1]), ("**Final Answer**", [2]), ("\n\n\\boxed{3}", [3])]
    gen, _ = make(tiny_model_dir, [script, script])
    final = asyncio.run(gen.complete(request(gen, split_reasoning=True), [])).choices[0]
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


VERDICT = {"response_format": {"type": "json_schema", "json_schema": {
    "name": "v", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}


def test_reason_then_schema_answers_under_the_schema_after_the_models_marker(tiny_model_dir):
    """The free pass stops where the model wrote its marker (what it would write after it is
    dropped); the second pass continues from there under the schema, in the room left."""
    free = [("Look.\n", [1]), ("**Final Answer**", [2]), (": 5 apples", [3]), ("!", [4])]
    gen, engine = make(tiny_model_dir, [free, [('{"a":', [10]), ("5}", [11])]],
                       structured_answer_tokens=100)
    seen = sampling_options_of(engine)
    final = asyncio.run(gen.complete(request(gen, split_reasoning=True, max_tokens=1000,
                                             **VERDICT), [])).choices[0]
    first, second = engine.calls
    assert seen[0].json is None and seen[0].max_tokens == 900
    assert seen[1].json is not None and '"integer"' in seen[1].json.schema
    assert second["request_id"] == "chatcmpl-test-answer"
    assert second["prompt"] == first["prompt"] + [1, 2]
    assert second["max_tokens"] == 1000 - 2
    assert (final.reasoning, final.text) == ("Look.\n", '{"a":5}')
    assert engine.closed == ["chatcmpl-test"] and final.finish_reason == "stop"
    assert final.outcome.final_answer_found and not final.outcome.thinking_budget_exhausted


def test_reason_then_schema_appends_the_cue_when_the_free_pass_ends_without_marker(
        tiny_model_dir):
    gen, engine = make(tiny_model_dir, [[("Hmm. ", [1]), ("Done.", [2])], [("{}", [10])]])
    seen = sampling_options_of(engine)
    final = asyncio.run(gen.complete(request(gen, split_reasoning=True, max_tokens=60,
                                             response_format={"type": "json_object"}),
                                     [])).choices[0]
    assert seen[0].max_tokens == 30  # at most half of a small max_tokens is kept back
    assert engine.calls[1]["prompt"][-len(gen._cue_ids):] == list(gen._cue_ids)
    assert seen[1].json.schema is None and seen[1].max_tokens == 60 - 2 - len(gen._cue_ids)
    assert (final.reasoning.strip(), final.text) == ("Hmm. Done.", "{}")


def test_without_split_mode_the_schema_holds_from_the_first_token(tiny_model_dir):
    gen, engine = make(tiny_model_dir, [[("{}", [10])]], default_max_reasoning_tokens=5)
    seen = sampling_options_of(engine)
    final = asyncio.run(gen.complete(request(gen, max_tokens=60, **VERDICT), [])).choices[0]
    assert len(seen) == 1 and seen[0].json is not None and seen[0].max_tokens == 60
    assert final.text == "{}" and final.outcome.max_reasoning_tokens is None
    assert final.outcome.reasoning_tokens == 0  # an answer in the schema, no reasoning


def test_the_engine_checks_the_options_before_the_request_is_accepted(tiny_model_dir):
    from serving.errors import InvalidRequestError

    gen, engine = make(tiny_model_dir, [[]])

    def refuse(options):
        raise InvalidRequestError("cannot compile", param="response_format")

    engine.check = refuse
    batches = gen.stream(request(gen, **VERDICT), [])
    with pytest.raises(InvalidRequestError, match="cannot compile"):
        asyncio.run(batches.__anext__())
    assert engine.calls == []


def test_n_choices_share_one_rendering_and_each_has_its_seed(tiny_model_dir):
    scripts = [[("a", [1]), ("b", [2])], [("c", [3])], [("d", [4]), ("e", [5]), ("f", [6])]]
    gen, engine = make(tiny_model_dir, scripts)
    seen = sampling_options_of(engine)
    done = asyncio.run(gen.complete(request(gen, n=3, seed=41), []))
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert sorted(c.text for c in done.choices) == ["ab", "c", "def"]
    assert done.completion_tokens == 6 and done.prompt_tokens == done.choices[1].prompt_tokens
    assert {call["request_id"] for call in engine.calls} == {
        "chatcmpl-test", "chatcmpl-test-1", "chatcmpl-test-2"}
    assert len({tuple(call["prompt"]) for call in engine.calls}) == 1
    assert sorted(o.seed for o in seen) == [41, 42, 43]


def test_n_choices_stream_with_their_indices(tiny_model_dir):
    gen, _ = make(tiny_model_dir, [[("a", [1])], [("b", [2])]])
    events = asyncio.run(collect(gen, request(gen, n=2)))
    assert events[0].kind == "accepted"
    assert sorted(e.index for e in events if e.kind == "final") == [0, 1]
    assert {e.index: e.text for e in events if e.kind == "delta"} == {0: "a", 1: "b"}


def test_an_error_in_one_choice_ends_the_request_and_aborts_the_others(tiny_model_dir):
    from serving.generate.generator import interleave

    closed = []

    async def endless(i):
        try:
            while True:
                yield i
                await asyncio.sleep(0)
        finally:
            closed.append(i)

    async def broken():
        yield -1
        raise RuntimeError("engine died")

    async def run():
        return [event async for event in interleave([endless(0), broken(), endless(2)])]

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(run())
    assert sorted(closed) == [0, 2]


def test_logprobs_follow_their_tokens_into_reasoning_and_content(tiny_model_dir):
    """One entry per completion token: the reasoning tokens' in reasoning_logprobs, the cue's
    (certain: 0.0) and the answer's in logprobs."""
    thinking = [(f"w{i} ", [100 + i]) for i in range(50)]
    gen, _ = make(tiny_model_dir, [thinking, [("It is 5.", [7, 8])]])
    final = asyncio.run(gen.complete(request(gen, split_reasoning=True, max_reasoning_tokens=10,
                                             max_tokens=100, logprobs=True), [])).choices[0]
    assert [lp.token for lp in final.reasoning_logprobs] == [f"t{100 + i}" for i in range(10)]
    cue = len(gen._cue_ids)
    assert [lp.logprob for lp in final.logprobs] == [0.0] * cue + [-0.5, -0.5]
    assert len(final.logprobs) + len(final.reasoning_logprobs) == final.completion_tokens


def test_request_priority_is_added_to_the_tier(tiny_model_dir):
    from serving.messages import BATCH_PRIORITY

    gen, engine = make(tiny_model_dir, [[("a", [1])]])
    gen._config.requests.priority_key_ids.append("vip")
    chat = ChatCompletionRequest(model="qvq-72b-preview", priority=-3,
                                 messages=[{"role": "user", "content": "x"}])
    asyncio.run(gen.complete(validate_chat(gen._config, chat, "vip"), [], BATCH_PRIORITY))
    assert engine.calls[0]["priority"] == BATCH_PRIORITY - 3
