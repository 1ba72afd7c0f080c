"""The per-request reasoning session on scripted token streams: split deltas, loop actions,
the thinking budget's conclude signal, the report, and options resolution from config, key
policy and request."""

from __future__ import annotations

import pytest

from serving.config import ReasoningConfig
from serving.errors import InvalidRequestError
from serving.generate.reasoning.options import resolve_reasoning_options
from serving.generate.reasoning.session import LOOP_STOP_REASON, Next, ReasoningSession
from serving.protocol import ChatCompletionRequest

CUE = "\n\n**Final Answer**\n\n"


def options(config: dict | None = None, key_id: str | None = None, **request):
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                 **request)
    return resolve_reasoning_options(ReasoningConfig(**(config or {})), chat, key_id)


def run(session: ReasoningSession, steps: list[tuple[str, list[int]]]):
    """Feed steps until the session says stop/conclude; returns (reasoning, content, action)."""
    reasoning, content, action = [], [], Next.CONTINUE
    for text, ids in steps:
        deltas, action = session.feed(text, ids)
        reasoning.append(deltas.reasoning)
        content.append(deltas.content)
        if action is not Next.CONTINUE:
            break
    return "".join(reasoning), "".join(content), action


def test_split_mode_routes_reasoning_and_answer_and_reports_boxes():
    session = ReasoningSession(options(split_reasoning=True))
    text = "Three apples,\nplus two.\n\n**Final Answer**\n\n\\boxed{5} apples"
    steps = [(text[i:i + 4], [2000 + i]) for i in range(0, len(text), 4)]
    reasoning, content, action = run(session, steps)
    deltas, outcome = session.finish()
    reasoning += deltas.reasoning
    content += deltas.content
    assert action is Next.CONTINUE
    assert reasoning == "Three apples,\nplus two.\n\n" and content == "\\boxed{5} apples"
    assert outcome.final_answer_found and outcome.boxed == ["5"]
    # tokens before the marker was recognised are reasoning; the rest answer
    assert 0 < outcome.reasoning_tokens < session.completion_tokens == len(steps)
    assert outcome.to_wire()["final_answer_found"] is True and "language" not in outcome.to_wire()


def test_unsplit_mode_streams_raw_text_but_still_reports():
    session = ReasoningSession(options(split_reasoning=False, include_language_stats=True))
    text = "Let me think.\nFinal Answer: \\boxed{\\frac{1}{2}}"
    _, content, _ = run(session, [(text[i:i + 5], [3000 + i]) for i in range(0, len(text), 5)])
    deltas, outcome = session.finish()
    assert content + deltas.content == text and deltas.reasoning == ""
    assert outcome.final_answer_found and outcome.boxed == ["\\frac{1}{2}"]
    assert outcome.to_wire()["language"]["dominant"] == "latin"


def test_no_marker_is_flagged_and_boxes_come_from_the_whole_text():
    session = ReasoningSession(options(split_reasoning=True))
    run(session, [("so it is \\boxed{7}", [1, 2, 3])])
    _, outcome = session.finish()
    assert not outcome.final_answer_found and outcome.boxed == ["7"]
    assert outcome.reasoning_tokens == 3


@pytest.mark.parametrize("period", [1, 4, 33, 120])
def test_a_cycle_stops_generation_in_stop_mode(period):
    session = ReasoningSession(options(split_reasoning=True))  # config default mode: stop
    head = [(f"w{i} ", [5000 + i]) for i in range(50)]
    span = [(f"s{i} ", [9000 + i]) for i in range(period)]
    reasoning, content, action = run(session, head + span * (400 // period + 4))
    assert action is Next.STOP_LOOP
    _, outcome = session.finish()
    assert outcome.stop_reason == LOOP_STOP_REASON and outcome.loop_action == "stopped"
    assert outcome.loop.period == period
    assert reasoning.startswith("w0 w1") and content == ""  # the reasoning so far comes back
    delay = outcome.loop.at_token - 50 + 1
    assert delay <= max(3 * period, 64 + period)


def test_detect_mode_reports_and_keeps_going():
    session = ReasoningSession(options(loop_guard="detect"))
    reasoning, content, action = run(session, [("x", [7])] * 300)
    assert action is Next.CONTINUE and content == "x" * 300
    _, outcome = session.finish()
    assert outcome.loop_action == "detected" and outcome.stop_reason is None
    assert outcome.to_wire()["loop"]["period"] == 1


def test_off_mode_never_looks():
    session = ReasoningSession(options(loop_guard="off"))
    assert run(session, [("x", [7])] * 300)[2] is Next.CONTINUE
    assert session.finish()[1].loop is None


def test_near_cycles_do_not_stop():
    session = ReasoningSession(options())
    steps = []
    for copy in range(30):  # the same sentence with one word changed each time
        steps += [(f"t{i} ", [100 + i if i != copy % 40 else 900 + copy]) for i in range(40)]
    assert run(session, steps)[2] is Next.CONTINUE


def test_budget_asks_to_conclude_once_then_the_cue_opens_the_answer():
    session = ReasoningSession(options(split_reasoning=True, max_reasoning_tokens=10,
                                       loop_guard="off"))
    steps = [(f"r{i} ", [400 + i]) for i in range(30)]
    reasoning, _, action = run(session, steps)
    assert action is Next.CONCLUDE and session.reasoning_tokens == 10
    cue = session.inject_cue(CUE, [1, 2, 3])
    answer, _ = session.feed("It is 5.", [77, 78])
    deltas, outcome = session.finish()
    assert (reasoning + cue.reasoning).rstrip() == " ".join(f"r{i}" for i in range(10))
    assert cue.content + answer.content + deltas.content == "It is 5."
    assert outcome.thinking_budget_exhausted and outcome.final_answer_found
    assert outcome.reasoning_tokens == 10 and session.completion_tokens == 10 + 3 + 2
    assert session.generated_ids == [400 + i for i in range(10)] + [1, 2, 3, 77, 78]


def test_budget_waits_for_a_marker_that_is_being_written():
    session = ReasoningSession(options(split_reasoning=True, max_reasoning_tokens=3,
                                       loop_guard="off"))
    _, _, action = run(session, [("a\n", [1]), ("**Final", [2]), (" Answer**", [3])])
    assert action is Next.CONTINUE  # the marker is complete but its line is not
    deltas, action = session.feed("\n5", [4])
    assert action is Next.CONTINUE and deltas.content == "5"
    assert not session.finish()[1].thinking_budget_exhausted


def test_budget_in_unsplit_mode_shows_the_cue_in_content():
    session = ReasoningSession(options(max_reasoning_tokens=2, loop_guard="off"))
    _, content, action = run(session, [("a ", [1]), ("b ", [2]), ("c ", [3])])
    assert action is Next.CONCLUDE
    assert content + session.inject_cue(CUE, [9]).content == "a b " + CUE


# --------------------------------------------------------------------------- options


def test_request_fields_override_config_defaults():
    opts = options({"split_final_answer": True, "default_max_reasoning_tokens": 100},
                   split_reasoning=False, loop_guard="detect", max_reasoning_tokens=50)
    assert (opts.split, opts.loop_guard, opts.max_reasoning_tokens) == (False, "detect", 50)
    opts = options({"split_final_answer": True, "default_max_reasoning_tokens": 100})
    assert (opts.split, opts.loop_guard, opts.max_reasoning_tokens) == (True, "stop", 100)


def test_ceilings_per_deployment_and_per_key():
    config = {"max_reasoning_tokens_ceiling": 4000,
              "per_key": {"small": {"default_max_reasoning_tokens": 500,
                                    "max_reasoning_tokens_ceiling": 1000}}}
    assert options(config, key_id="small").max_reasoning_tokens == 500
    assert options(config, key_id="other").max_reasoning_tokens is None
    assert options(config, key_id="other", max_reasoning_tokens=4000).max_reasoning_tokens \
        == 4000
    with pytest.raises(InvalidRequestError, match="above the 1000 allowed for this API key"):
        options(config, key_id="small", max_reasoning_tokens=2000)
    with pytest.raises(InvalidRequestError, match="above the 4000 allowed; ask for at most"):
        options(config, max_reasoning_tokens=4001)


def test_a_locked_loop_guard_refuses_request_overrides():
    locked = {"loop_guard": {"mode": "stop", "allow_request_override": False}}
    assert options(locked, loop_guard="stop").loop_guard == "stop"
    with pytest.raises(InvalidRequestError, match="does not let requests change it") as exc:
        options(locked, loop_guard="off")
    assert exc.value.param == "loop_guard"


def test_config_rejects_inconsistent_budgets_and_a_cue_without_marker():
    with pytest.raises(ValueError, match="above the ceiling"):
        ReasoningConfig(default_max_reasoning_tokens=10, max_reasoning_tokens_ceiling=5)
    with pytest.raises(ValueError, match="per_key.k.default_max_reasoning_tokens"):
        ReasoningConfig(max_reasoning_tokens_ceiling=5,
                        per_key={"k": {"default_max_reasoning_tokens": 6}})
    with pytest.raises(ValueError, match="final-answer marker"):
        ReasoningConfig(final_answer_cue="Therefore:")
    with pytest.raises(ValueError):
        ReasoningConfig(loop_guard={"mode": "sometimes"})
