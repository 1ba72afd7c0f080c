"""Split a QVQ answer into its reasoning and its final answer, and pull out ``\\boxed{...}``.

QVQ ends its step-by-step reasoning with a "Final Answer" section in a few spellings: bold
(``**Final Answer**``, ``**Final Answer:**``, ``**Final Answer**:``), a Markdown heading
(``### Final Answer``), a plain ``Final Answer:`` line, or the Chinese ``最终答案``. A marker
must start a line, so a sentence that merely mentions "the final answer" does not end the
reasoning. The marker itself belongs to neither part.

The split is at the *first* marker, in whole texts and streams alike: a stream cannot take back
reasoning it already sent, and a streamed answer must equal the non-streamed one. (QVQ writes
the marker once, at the end; when it writes a tentative one earlier, what follows it, the
re-check included, is the answer.)

:class:`StreamSplitter` does the same on a token stream: it holds back only as many characters
as could still turn out to be the start of a marker, so deltas flow with a small, bounded lag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A marker starts a line (after optional spaces / list or quote marks) and ends the line or is
# followed by the answer on the same line.
_MARKER = re.compile(
    r"(?m)^(?:[ \t>]|[-*+][ \t])*"  # indentation, quotes, list bullets
    r"(?:"
    r"\*\*\s*(?:Final\s+Answer|最终答案)\s*[:：]?\s*\*\*\s*[:：]?"  # **Final Answer** / **…:**
    r"|#{1,6}\s*(?:Final\s+Answer|最终答案)\s*[:：]?"  # ### Final Answer
    r"|(?:Final\s+Answer|最终答案)\s*[:：]"  # Final Answer:
    r")[ \t]*",
    re.IGNORECASE,
)
# Longest text a marker can span before it is recognisable (holdback for streaming).
_MAX_MARKER_CHARS = 40


@dataclass(frozen=True)
class Split:
    reasoning: str
    answer: str | None  # None: no final-answer marker; everything stays reasoning-free content
    boxed: list[str] = field(default_factory=list)

    @property
    def has_final_answer(self) -> bool:
        return self.answer is not None


def boxed_contents(text: str) -> list[str]:
    """Every ``\\boxed{...}`` body, nested braces kept, escaped braces ignored; an unclosed
    box (a truncated answer) is left out."""
    out = []
    start = 0
    while (i := text.find("\\boxed{", start)) != -1:
        j = i + len("\\boxed{")
        depth, k = 1, j
        while k < len(text) and depth:
            ch = text[k]
            if ch == "\\" and k + 1 < len(text) and text[k + 1] in "{}":
                k += 2
                continue
            depth += ch == "{"
            depth -= ch == "}"
            k += 1
        if depth == 0:
            out.append(text[j:k - 1])
        start = j
    return out


def has_marker(text: str) -> bool:
    return _MARKER.search(text) is not None


def split_final_answer(text: str) -> Split:
    """Reasoning before the first final-answer marker, answer after it (stripped)."""
    first = _MARKER.search(text)
    if first is None:
        return Split(reasoning="", answer=None, boxed=boxed_contents(text))
    answer = text[first.end():].strip()
    return Split(reasoning=text[:first.start()].rstrip(), answer=answer,
                 boxed=boxed_contents(answer))


class StreamSplitter:
    """Routes streamed text to reasoning or answer deltas as the marker goes by.

    ``feed(delta)`` returns ``(reasoning_delta, answer_delta)``; ``close()`` flushes. Before the
    marker, text that could still be the start of one (the current line, while it is at most
    40 characters long) is held back. After the first marker everything is answer, as in
    :func:`split_final_answer`.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._in_answer = False
        self._answer_started = False

    def feed(self, delta: str) -> tuple[str, str]:
        if self._in_answer:
            return "", self._answer(delta)
        self._pending += delta
        match = _MARKER.search(self._pending)
        if match and (match.end() < len(self._pending) or self._pending.endswith("\n")):
            reasoning = self._pending[:match.start()]
            rest = self._pending[match.end():]
            self._pending = ""
            self._in_answer = True
            return reasoning, self._answer(rest)
        line_start = self._pending.rfind("\n") + 1
        # only the current line can still become a marker, and only while it is short
        hold_from = line_start if len(self._pending) - line_start <= _MAX_MARKER_CHARS \
            else len(self._pending)
        emit, self._pending = self._pending[:hold_from], self._pending[hold_from:]
        return emit, ""

    def close(self) -> tuple[str, str]:
        if self._in_answer:
            return "", ""
        rest, self._pending = self._pending, ""
        match = _MARKER.search(rest)
        if match:
            self._in_answer = True
            return rest[:match.start()], self._answer(rest[match.end():])
        return rest, ""

    @property
    def in_answer(self) -> bool:
        return self._in_answer

    @property
    def marker_pending(self) -> bool:
        """A complete marker is held back, waiting for the rest of its line."""
        return not self._in_answer and _MARKER.search(self._pending) is not None

    def _answer(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip()
            self._answer_started = bool(text)
        return text
