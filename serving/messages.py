"""What travels between our own deployments (through Ray), apart from the OpenAI wire models
(:mod:`serving.protocol`).

- :class:`ImageSource` (one request image, classified and checked at the edge) goes to the
  preprocessor, which answers with :class:`PreparedImage` (pixels on the model's grid);
- :class:`GenerationRequest` (a request validated once, :func:`serving.api.validation.
  validate_chat`) goes to the generator, which answers with :class:`GenerationEvent` items.

Small frozen dataclasses: cheap to pickle, no validation on the way (it happened at the edge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from serving.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    CompletionTokensDetails,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
    now,
)

LIVE_PRIORITY = 0  # vLLM's scheduler serves lower values first: API traffic...
BATCH_PRIORITY = 10  # ...before batch-job lines

if TYPE_CHECKING:
    from serving.generate.reasoning.options import ReasoningOptions
    from serving.generate.reasoning.session import ReasoningOutcome


@dataclass(frozen=True, slots=True)
class ImageSource:
    """One image of a request, as the edge understood it: which kind of source (a name in
    :data:`serving.preprocess.sources.SOURCE_TYPES`), the URL, and what its checks parsed out
    of it (the bucket and key of ``s3://``, the SHA-256 of ``qvq-image://``), and the pixel
    bounds it is resized into, resolved from ``detail`` or its explicit bounds (None: the
    deployment's ``image.min_pixels`` / ``max_pixels``)."""

    kind: str
    url: str
    bucket: str | None = None
    key: str | None = None
    sha256: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image already decoded, oriented, converted to RGB and resized to the model's grid.

    ``pixels`` is an HxWx3 uint8 array: Ray ships it through the object store without base64
    and without a copy on the receiving side.
    """

    pixels: np.ndarray
    source_width: int
    source_height: int
    source_format: str
    sha256: str
    cache: Literal["miss", "memory", "store"] = "miss"  # where these pixels came from

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A chat request validated once at the edge, as the generator gets it: the chat with its
    image data replaced by placeholders (the pixels come separately), who asked, the reasoning
    options resolved for that caller, and the images' sources."""

    request_id: str
    chat: ChatCompletionRequest
    reasoning: ReasoningOptions
    key_id: str | None = None
    images: tuple[ImageSource, ...] = ()
    created: int = field(default_factory=now)
    priority: int = LIVE_PRIORITY  # the request's own (allowed keys only), added to the tier's


@dataclass(frozen=True, slots=True)
class Logprob:
    """One generated token's log probability and its most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    def to_wire(self) -> TokenLogprob:
        return TokenLogprob(token=self.token, logprob=self.logprob,
                            bytes=list(self.token.encode()),
                            top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode()))
                                          for t, lp in self.top])


def forced(token: str) -> Logprob:
    """A token the server put into the answer (the final-answer cue after the thinking
    budget): certain, so log probability 0, and the only alternative."""
    return Logprob(token, 0.0, ((token, 0.0),))


@dataclass(frozen=True, slots=True)
class GenerationEvent:
    """One step of a generation stream, generator -> its caller.

    The first event of every stream is ``kind="accepted"`` with the prompt token count (the
    request passed validation and entered the engine); then ``"delta"`` events (``text`` for
    content, ``reasoning`` for reasoning_content in split mode); the last one carries
    ``finish_reason``, the final counts and the reasoning report (``outcome``).
    """

    kind: Literal["accepted", "delta", "final"]
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    image_cache: tuple[str, ...] = ()  # per image: miss / memory / store
    reasoning: str = ""
    outcome: ReasoningOutcome | None = None
    index: int = 0  # the choice (n > 1) this delta or final belongs to
    logprobs: tuple[Logprob, ...] = ()  # with logprobs: the tokens of `text`
    reasoning_logprobs: tuple[Logprob, ...] = ()  # ... and of `reasoning`

    @property
    def stop_reason(self) -> str | None:
        return self.outcome.stop_reason if self.outcome is not None else None

    def report(self) -> dict[str, Any] | None:
        return self.outcome.to_wire() if self.outcome is not None else None


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished request: the ``final`` event of each choice, in index order. The prompt is
    counted once; completion and reasoning tokens add up over the choices."""

    choices: tuple[GenerationEvent, ...]

    @property
    def prompt_tokens(self) -> int:
        return self.choices[0].prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def reasoning_tokens(self) -> int | None:
        outcomes = [c.outcome for c in self.choices if c.outcome is not None]
        return sum(o.reasoning_tokens for o in outcomes) if outcomes else None

    @property
    def image_cache(self) -> tuple[str, ...]:
        return self.choices[0].image_cache

    def usage(self) -> Usage:
        reasoning = self.reasoning_tokens
        details = None if reasoning is None else CompletionTokensDetails(
            reasoning_tokens=reasoning)
        return Usage(prompt_tokens=self.prompt_tokens,
                     completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens,
                     completion_tokens_details=details)


def wire_logprobs(content: tuple[Logprob, ...],
                  reasoning: tuple[Logprob, ...]) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[lp.to_wire() for lp in content],
                          reasoning_content=[lp.to_wire() for lp in reasoning] or None)


def completion_response(request_id: str, created: int, model: str, completion: Completion,
                        with_logprobs: bool = False) -> ChatCompletion:
    """The OpenAI chat.completion object for a finished generation (live or batch)."""
    choices = []
    for final in completion.choices:
        message = ResponseMessage(content=final.text, reasoning_content=final.reasoning or None)
        choices.append(Choice(
            index=final.index, message=message, finish_reason=final.finish_reason,
            logprobs=wire_logprobs(final.logprobs, final.reasoning_logprobs)
            if with_logprobs else None,
            stop_reason=final.stop_reason, qvq=final.report()))
    return ChatCompletion(id=request_id, created=created, model=model, choices=choices,
                          usage=completion.usage())
