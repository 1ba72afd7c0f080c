"""QVQ's final-answer forms split off the reasoning; boxes with nested braces; streams route
deltas the same way."""

from __future__ import annotations

import pytest

from serving.generate.reasoning.final_answer import (
    StreamSplitter,
    boxed_contents,
    split_final_answer,
)

REASONING = "Let me look at the image.\nThere are three apples and two pears.\nSo 3 + 2 = 5."


@pytest.mark.parametrize("marker", [
    "**Final Answer**", "**Final Answer:**", "**Final Answer**:", "### Final Answer",
    "# Final Answer:", "Final Answer:", "**final answer**", "**最终答案**", "最终答案：",
    "  **Final Answer**", "- **Final Answer:**", "> ### Final Answer",
])
def test_every_marker_form_splits(marker):
    text = f"{REASONING}\n\n{marker}\n\\[ \\boxed{{5}} \\]"
    split = split_final_answer(text)
    assert split.has_final_answer
    assert split.reasoning == REASONING
    assert split.answer == "\\[ \\boxed{5} \\]"
    assert split.boxed == ["5"]


def test_answer_on_the_marker_line_and_first_marker_wins_as_in_streams():
    text = ("Is this the final answer? Not yet.\nFinal Answer: maybe 4\nWait, recount.\n"
            "**Final Answer:** 5 apples")
    split = split_final_answer(text)
    assert split.reasoning == "Is this the final answer? Not yet."
    assert split.answer == "maybe 4\nWait, recount.\n**Final Answer:** 5 apples"
    reasoning, answer, _ = stream(text, 4)
    assert (reasoning.rstrip(), answer) == (split.reasoning, split.answer)


def test_mentions_inside_a_sentence_are_not_markers():
    text = "We need the final answer: it depends.\nThe **Final Answer** is below? No."
    split = split_final_answer(text)
    assert not split.has_final_answer and split.answer is None and split.reasoning == ""


def test_boxed_nested_escaped_multiple_and_truncated():
    assert boxed_contents(r"\boxed{\frac{1}{2}}") == [r"\frac{1}{2}"]
    assert boxed_contents(r"\boxed{a} and \boxed{\{x\}}") == ["a", r"\{x\}"]
    assert boxed_contents(r"\boxed{\sqrt{2} + \left(3\right)") == []  # cut off mid-box
    assert boxed_contents("no box") == []


def stream(text: str, size: int) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = StreamSplitter()
    deltas = [splitter.feed(text[i:i + size]) for i in range(0, len(text), size)]
    deltas.append(splitter.close())
    return "".join(r for r, _ in deltas), "".join(a for _, a in deltas), deltas


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_stream_matches_the_whole_text_split(size):
    text = f"{REASONING}\n\n**Final Answer**\n\n\\[ \\boxed{{\\frac{{10}}{{2}}}} \\]"
    reasoning, answer, _ = stream(text, size)
    split = split_final_answer(text)
    assert reasoning.rstrip() == split.reasoning
    assert answer == split.answer


def test_stream_without_marker_is_all_reasoning_and_lag_is_bounded():
    text = "word " * 400
    reasoning, answer, deltas = stream(text, 5)
    assert reasoning == text and answer == ""
    held = 0
    for i, (r, _) in enumerate(deltas[:-1]):
        held = held + 5 - len(r)
        assert held <= 40 + 5, i  # never more than a possible marker's length behind


def test_stream_holds_a_marker_split_across_deltas():
    splitter = StreamSplitter()
    assert splitter.feed("Thinking done.\n**Final") == ("Thinking done.\n", "")
    assert splitter.feed(" Answer**") == ("", "")
    assert splitter.marker_pending
    assert splitter.feed("\n42") == ("", "42")
    assert splitter.in_answer and splitter.close() == ("", "")
