"""How much an answer mixes scripts: CJK inside a Latin-script answer, or the reverse.

QVQ is known to switch language mid-answer. The unit of comparison is a *word*: a run of Latin
letters counts one, and so does each CJK character (Chinese writes a word in one or two
characters, so per-character counting would drown Latin text). LaTeX commands (``\\frac``,
``\\boxed``) and the letters inside math are notation, not language, and are skipped; Greek,
Cyrillic and other scripts are counted apart and do not make an answer mixed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_INLINE_MATH = re.compile(r"\$[^$\n]{0,200}\$|\\\(.{0,200}?\\\)|\\\[.{0,2000}?\\\]", re.S)
_LATIN_WORD = re.compile(r"[A-Za-z\u00C0-\u024F]{2,}")  # one-letter variables are notation
_CJK = re.compile(r"[\u3040-\u30FF\u3400-\u4DBF\u4E00-\u9FFF\uAC00-\uD7AF\uF900-\uFAFF"
                  r"\U00020000-\U0002A6DF]")

# An answer is "mixed" when the minority script holds at least this share of the words and at
# least this many words (a lone quoted name is not language mixing).
MIXED_FRACTION = 0.02
MIXED_MIN_WORDS = 3


@dataclass(frozen=True)
class ScriptMix:
    latin_words: int
    cjk_chars: int
    dominant: str  # "latin", "cjk" or "none"
    minority_fraction: float  # minority words / (latin words + CJK characters)
    mixed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def script_mix(text: str) -> ScriptMix:
    prose = _LATEX_COMMAND.sub(" ", _INLINE_MATH.sub(" ", text))
    latin = len(_LATIN_WORD.findall(prose))
    cjk = len(_CJK.findall(prose))
    total = latin + cjk
    if total == 0:
        return ScriptMix(0, 0, "none", 0.0, False)
    dominant = "cjk" if cjk > latin else "latin"
    minority = min(latin, cjk)
    fraction = minority / total
    return ScriptMix(latin, cjk, dominant, round(fraction, 4),
                     minority >= MIXED_MIN_WORDS and fraction >= MIXED_FRACTION)
