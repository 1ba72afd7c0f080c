"""Requests whose outcome is forced, so no test depends on what the random-weight model happens
to generate on this CPU (its text differs between machines, and so would loops, early ends and
final-answer markers that a test merely hoped for).

- **a loop**: a +100 logit bias on one word token makes that token win every step (the tiny
  model's own logits span a few units), so the answer is that token repeated, a cycle of
  period 1 from the first token, which the loop guard must catch;
- **an answer that ends at once**: the same bias on the end-of-sequence token;
- **an answer that runs to max_tokens**: ``ignore_eos`` with the loop guard off, whatever the
  text is (streams held open by the capacity, fault and batch tests).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

RUNS_TO_MAX_TOKENS: dict[str, Any] = {"ignore_eos": True, "loop_guard": "off"}


@dataclass(frozen=True)
class Forcing:
    word: str  # the text of the repeated token
    word_id: int
    eos_id: int

    @property
    def loop(self) -> dict[str, Any]:
        """Request fields whose answer is ``word`` repeated (greedy or not)."""
        return {"logit_bias": {str(self.word_id): 100}}

    @property
    def end_at_once(self) -> dict[str, Any]:
        """Request fields whose answer is the end-of-sequence token alone."""
        return {"logit_bias": {str(self.eos_id): 100}}


def forcing_for(model_dir: pathlib.Path, word: str = "a") -> Forcing:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer.encode(word, add_special_tokens=False)
    assert len(ids) == 1, f"{word!r} is not one token of {model_dir}"
    return Forcing(word=word, word_id=ids[0], eos_id=tokenizer.eos_token_id)
