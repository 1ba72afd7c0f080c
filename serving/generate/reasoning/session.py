"""One request's reasoning bookkeeping while its tokens stream: split, loop guard, budget.

The generator feeds every engine step (new text and token ids) into a :class:`ReasoningSession`
and gets back the deltas to send (reasoning and content) and what to do next: go on, stop (the
loop guard fired in ``stop`` mode) or conclude (the thinking budget ran out without a final
answer: the generator appends the final-answer cue and lets the model answer). The session has
no engine and no I/O, so scripted streams test it completely.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from serving.generate.reasoning.final_answer import StreamSplitter, boxed_contents
from serving.generate.reasoning.language import ScriptMix, script_mix
from serving.generate.reasoning.loop_guard import LoopDetection, LoopGuard
from serving.generate.reasoning.options import ReasoningOptions

LOOP_STOP_REASON = "loop_detected"  # choices[].stop_reason when the guard ended generation


class Next(enum.Enum):
    CONTINUE = "continue"
    STOP_LOOP = "stop_loop"  # the guard fired in stop mode: abort generation
    CONCLUDE = "conclude"  # thinking budget spent: append the cue, let the model answer
    ANSWER = "answer"  # reason-then-schema: the marker is written, the schema pass answers


@dataclass(frozen=True, slots=True)
class Deltas:
    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


@dataclass(frozen=True)
class ReasoningOutcome:
    """What the response reports about the reasoning (``choices[].qvq`` and usage)."""

    split: bool
    final_answer_found: bool
    boxed: list[str]
    reasoning_tokens: int
    loop: LoopDetection | None = None
    loop_action: str | None = None  # "detected" or "stopped"
    max_reasoning_tokens: int | None = None
    thinking_budget_exhausted: bool = False
    language: ScriptMix | None = None
    include_language: bool = False
    stop_reason: str | None = None

    def to_wire(self) -> dict:
        body: dict = {"final_answer_found": self.final_answer_found, "boxed": self.boxed,
                      "reasoning_tokens": self.reasoning_tokens,
                      "loop": None if self.loop is None
                      else {**self.loop.to_dict(), "action": self.loop_action},
                      "max_reasoning_tokens": self.max_reasoning_tokens,
                      "thinking_budget_exhausted": self.thinking_budget_exhausted}
        if self.include_language and self.language is not None:
            body["language"] = self.language.to_dict()
        return body


@dataclass
class _Text:
    raw: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)


class ReasoningSession:
    def __init__(self, options: ReasoningOptions, filler_ids: Iterable[int] = ()):
        self.options = options
        g = options.guard
        self._guard = None if options.loop_guard == "off" else LoopGuard(
            max_period=g.max_period, repeats=g.repeats, min_repeated_tokens=g.min_repeated_tokens,
            min_filler_repeated_tokens=g.min_filler_repeated_tokens, filler_ids=filler_ids)
        self._splitter = StreamSplitter()
        self._text = _Text()
        self.generated_ids: list[int] = []  # model tokens and the injected cue, in order
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.loop: LoopDetection | None = None
        self.loop_stopped = False
        self.budget_exhausted = False
        self.answer_pass = False  # reason-then-schema: the schema-constrained pass has begun

    @property
    def in_reasoning(self) -> bool:
        """The next tokens count as reasoning (no final-answer marker written yet)."""
        return not (self._splitter.in_answer or self._splitter.marker_pending)

    def start_answer_pass(self) -> None:
        self.answer_pass = True

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[Deltas, Next]:
        """One engine step: its new text and token ids."""
        # a marker already written (held back until its line goes on) makes these answer tokens
        if self.in_reasoning and not self.options.schema_from_start:  # JSON is no reasoning
            self.reasoning_tokens += len(token_ids)
        self.completion_tokens += len(token_ids)
        self.generated_ids.extend(token_ids)
        action = Next.CONTINUE
        guard = self._guard
        if guard is not None and self.loop is None:
            for token in token_ids:
                if (found := guard.feed(token)) is not None:
                    self.loop = found
                    if self.options.loop_guard == "stop":
                        self.loop_stopped = True
                        action = Next.STOP_LOOP
                    break
        reasoning, answer = self._splitter.feed(text)
        if self.options.reason_then_schema and not self.answer_pass and not self.in_reasoning:
            # the marker is out: what the free pass writes after it is replaced by the
            # schema-constrained answer
            answer = ""
            if action is Next.CONTINUE:
                action = Next.ANSWER
        deltas = self._route(text, reasoning, answer)
        budget = self.options.max_reasoning_tokens
        if action is Next.CONTINUE and budget is not None and not self.budget_exhausted \
                and self.reasoning_tokens >= budget and not self._splitter.in_answer \
                and not self._splitter.marker_pending:
            self.budget_exhausted = True
            action = Next.CONCLUDE
        return deltas, action

    def inject_cue(self, cue: str, cue_ids: Sequence[int]) -> Deltas:
        """The final-answer cue goes into the text (and the next prompt), not to the guard."""
        self.completion_tokens += len(cue_ids)
        self.generated_ids.extend(cue_ids)
        return self._route(cue, *self._splitter.feed(cue))

    def finish(self) -> tuple[Deltas, ReasoningOutcome]:
        deltas = self._route("", *self._splitter.close())
        text = self._text
        found = self._splitter.in_answer
        answer = "".join(text.answer)
        whole = "".join(text.raw)
        outcome = ReasoningOutcome(
            split=self.options.split, final_answer_found=found,
            boxed=boxed_contents(answer if found else whole),
            reasoning_tokens=self.reasoning_tokens, loop=self.loop,
            loop_action=None if self.loop is None
            else ("stopped" if self.loop_stopped else "detected"),
            max_reasoning_tokens=self.options.max_reasoning_tokens,
            thinking_budget_exhausted=self.budget_exhausted,
            language=script_mix(whole), include_language=self.options.language_stats,
            stop_reason=LOOP_STOP_REASON if self.loop_stopped else None)
        return deltas, outcome

    def _route(self, text: str, reasoning: str, answer: str) -> Deltas:
        """Record the splitter's view; send split deltas, or the raw text when not splitting."""
        self._text.raw.append(text)
        if reasoning:
            self._text.reasoning.append(reasoning)
        if answer:
            self._text.answer.append(answer)
        if self.options.split:
            return Deltas(reasoning=reasoning, content=answer)
        return Deltas(content=text)
