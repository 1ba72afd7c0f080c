"""What one request gets: the deployment's reasoning config, the caller's key policy and the
request's own fields, merged, with out-of-bounds asks refused (400) before generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serving.config import LoopGuardConfig, ReasoningConfig
from serving.errors import InvalidRequestError
from serving.protocol import ChatCompletionRequest

LoopGuardMode = Literal["off", "detect", "stop"]


@dataclass(frozen=True, slots=True)
class ReasoningOptions:
    split: bool
    loop_guard: LoopGuardMode
    max_reasoning_tokens: int | None  # None: no thinking budget
    answer_budget_tokens: int
    final_answer_cue: str
    language_stats: bool
    guard: LoopGuardConfig  # detection thresholds
    # a JSON response_format in split mode: free reasoning, then the answer under the schema
    reason_then_schema: bool = False
    schema_answer_tokens: int = 0  # kept back from max_tokens for that answer
    schema_from_start: bool = False  # a JSON response_format without free reasoning first


def resolve_reasoning_options(config: ReasoningConfig, chat: ChatCompletionRequest,
                              key_id: str | None) -> ReasoningOptions:
    policy = config.per_key.get(key_id) if key_id is not None else None
    default = (policy and policy.default_max_reasoning_tokens) \
        or config.default_max_reasoning_tokens
    ceiling = (policy and policy.max_reasoning_tokens_ceiling) \
        or config.max_reasoning_tokens_ceiling
    budget = chat.max_reasoning_tokens if chat.max_reasoning_tokens is not None else default
    if chat.max_reasoning_tokens is not None and ceiling is not None \
            and chat.max_reasoning_tokens > ceiling:
        raise InvalidRequestError(
            f"max_reasoning_tokens is {chat.max_reasoning_tokens}, above the {ceiling} allowed "
            f"{'for this API key' if policy and policy.max_reasoning_tokens_ceiling else ''}"
            .rstrip() + f"; ask for at most {ceiling}.", param="max_reasoning_tokens")
    guard = config.loop_guard
    mode: LoopGuardMode = guard.mode
    if chat.loop_guard is not None and chat.loop_guard != mode:
        if not guard.allow_request_override:
            raise InvalidRequestError(
                f"this deployment runs the loop guard in '{mode}' mode and does not let "
                "requests change it; leave out loop_guard", param="loop_guard")
        mode = chat.loop_guard
    split = config.split_final_answer if chat.split_reasoning is None else chat.split_reasoning
    reason_then_schema = chat.structured is not None and split \
        and config.structured_after_reasoning
    if chat.structured is not None and not reason_then_schema:
        budget = None  # the schema holds from the first token: there is no reasoning to end
    return ReasoningOptions(
        split=split,
        loop_guard=mode,
        max_reasoning_tokens=budget,
        answer_budget_tokens=config.answer_budget_tokens,
        final_answer_cue=config.final_answer_cue,
        language_stats=config.include_language_stats if chat.include_language_stats is None
        else chat.include_language_stats,
        guard=guard,
        reason_then_schema=reason_then_schema,
        schema_answer_tokens=config.structured_answer_tokens,
        schema_from_start=chat.structured is not None and not reason_then_schema,
    )
