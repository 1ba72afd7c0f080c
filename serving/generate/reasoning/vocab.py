"""Which token ids are filler (whitespace and punctuation only), for the loop guard."""

from __future__ import annotations

from typing import Any


def filler_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids whose text has no letter or digit: rules, table borders, indentation, newlines.

    Special tokens are left out (they are never part of a repeating span of prose). Decoding the
    whole vocabulary once per replica takes about a second for Qwen2's 151k tokens.
    """
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    return frozenset(i for i, text in zip(ids, texts, strict=True)
                     if text and not any(ch.isalnum() for ch in text))
