"""The engine protocol the generator depends on.

The generator never touches vLLM directly: it renders a prompt, builds :class:`SamplingOptions`
and iterates :class:`EngineStep` items. This keeps vLLM version churn in one module and lets unit
tests of generator logic run without an engine (integration tests always use real vLLM).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from serving.messages import Logprob, PreparedImage


@dataclass(frozen=True, slots=True)
class JsonConstraint:
    """Decode only JSON: matching ``schema`` (its JSON text), or any object when None.
    (Whitespace is the engine's setting: ``requests.structured_output.compact_json``.)"""

    schema: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    json: JsonConstraint | None = None


@dataclass(frozen=True, slots=True)
class EngineStep:
    """New text and token ids since the previous step, with running token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    token_ids: tuple[int, ...] = ()
    queue_s: float | None = None  # on the last step: time in the engine's scheduler queue
    logprobs: tuple[Logprob, ...] = ()  # one per token id, when asked for


class Engine(Protocol):
    async def generate(self, prompt_token_ids: list[int], images: Sequence[PreparedImage],
                       options: SamplingOptions, request_id: str,
                       priority: int = 0) -> AsyncIterator[EngineStep]:
        """Stream steps; raises InvalidRequestError for requests the engine rejects.

        Closing the iterator early (``aclose``) aborts the request in the engine.
        """
        ...

    def check(self, options: SamplingOptions) -> None:
        """Raise InvalidRequestError when the engine would refuse these options (a schema its
        grammar backend cannot compile): called before a stream is accepted."""
        ...

    async def check_health(self) -> None:
        """Raise when the engine cannot serve (dead core process, crashed workers)."""
        ...

    def shutdown(self) -> None: ...
