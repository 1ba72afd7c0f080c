"""Chat messages -> the model's own prompt, with an exact token count.

The prompt is rendered with the checkpoint's chat template and tokenized once here; the engine
gets token ids, so vLLM does not tokenize again. Each image is one ``<|image_pad|>`` in the
template that vLLM expands to the image's visual tokens, which lets us count the full prompt
(and reject what cannot fit) before any GPU work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.config import ModelConfig
from serving.errors import ContextLengthError, InvalidRequestError
from serving.messages import PreparedImage
from serving.preprocess.geometry import visual_tokens
from serving.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ImagePart,
    SystemMessage,
    TextPart,
)

VISION_START = "<|vision_start|>"  # opens each image's block in Qwen2-VL's template


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    token_ids: list[int]
    num_tokens: int  # with every image expanded to its visual tokens
    max_tokens: int  # granted completion budget


def _text_of(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def to_template_messages(chat: ChatCompletionRequest,
                         default_system_prompt: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if default_system_prompt and not any(isinstance(m, SystemMessage) for m in chat.messages):
        messages.append({"role": "system", "content": default_system_prompt})
    for msg in chat.messages:
        if isinstance(msg, SystemMessage | AssistantMessage):
            messages.append({"role": msg.role, "content": _text_of(msg.content)})
        elif isinstance(msg.content, str):
            messages.append({"role": "user", "content": msg.content})
        else:
            parts = [{"type": "image"} if isinstance(p, ImagePart)
                     else {"type": "text", "text": p.text} for p in msg.content]
            messages.append({"role": "user", "content": parts})
    return messages


class PromptBuilder:
    def __init__(self, model: ModelConfig, tokenizer: Any):
        self._model = model
        self._tokenizer = tokenizer
        self._vision_start = tokenizer.convert_tokens_to_ids(VISION_START)
        # The Rust tokenizer itself when there is one: transformers' Python call path around it
        # costs more than the encoding (padding and truncation strategies, batching), and this
        # runs once per request in the generator's process. Same ids
        # (tests/unit/generate/test_prompt.py).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._encode = (lambda text: backend.encode(text, add_special_tokens=False).ids) \
            if backend is not None \
            else (lambda text: tokenizer.encode(text, add_special_tokens=False))

    def render(self, chat: ChatCompletionRequest,
               images: Sequence[PreparedImage]) -> RenderedPrompt:
        messages = to_template_messages(chat, self._model.default_system_prompt)
        try:
            text = self._tokenizer.apply_chat_template(messages, tokenize=False,
                                                       add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - template errors are about message shape
            raise InvalidRequestError(f"messages could not be rendered with the model's chat "
                                      f"template: {exc}", param="messages") from None
        token_ids = list(self._encode(text))
        n_tokens = len(token_ids) + sum(visual_tokens(i.height, i.width) - 1 for i in images)
        limit = self._model.max_model_len
        requested = chat.requested_max_tokens
        if chat.truncate_prompt_tokens is not None:
            token_ids, n_tokens = self._truncated(token_ids, n_tokens, chat.truncate_prompt_tokens,
                                                  limit - (requested or 1))
        room = limit - n_tokens
        if requested is not None and n_tokens + requested > limit:
            param = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. The prompt uses "
                f"{n_tokens} tokens (text and images) and {requested} completion tokens were "
                f"requested; reduce the prompt, the images or {param}.", param=param)
        if room < 1:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens, and the prompt alone "
                f"uses {n_tokens} tokens (text and images); shorten it or send fewer or smaller "
                "images.", param="messages")
        max_tokens = requested if requested is not None else min(self._model.default_max_tokens,
                                                                 room)
        if chat.min_tokens > max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({chat.min_tokens}) is above the {max_tokens} completion tokens "
                "this request gets; lower min_tokens or set max_tokens", param="min_tokens")
        return RenderedPrompt(token_ids=token_ids, num_tokens=n_tokens, max_tokens=max_tokens)

    def _truncated(self, token_ids: list[int], n_tokens: int, keep: int,
                   fits: int) -> tuple[list[int], int]:
        """The last ``keep`` prompt tokens (-1: as many as fit beside the completion). Only
        text before the first image can go: an image is all of its tokens or none."""
        keep = fits if keep == -1 else keep
        drop = n_tokens - keep
        if drop <= 0:
            return token_ids, n_tokens
        text_before_image = token_ids.index(self._vision_start) \
            if self._vision_start in token_ids else len(token_ids)
        if drop > text_before_image:
            raise InvalidRequestError(
                f"keeping the last {keep} of the prompt's {n_tokens} tokens would cut into its "
                f"first image (only the {text_before_image} tokens before it can go); keep at "
                f"least {n_tokens - text_before_image}, or send fewer or smaller images",
                param="truncate_prompt_tokens")
        return token_ids[drop:], n_tokens - drop
