"""OpenAI chat-completions wire models (the subset QVQ serves). What travels between our own
deployments is in :mod:`serving.messages`.

Requests reject unknown fields so a misspelt parameter is a 400 naming it rather than a silent
default. Content parts are text and image_url only; anything else is a 400 naming the part.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from serving.errors import InvalidRequestError, elide

SUPPORTED_PART_TYPES = ("text", "image_url")
MAX_LOGIT_BIAS_TOKENS = 300
MAX_STOP_TOKEN_IDS = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    """OpenAI's ``image_url`` object, plus our per-image pixel bounds (sent inside it, as the
    openai client passes unknown keys of the dict through). ``detail`` picks a configured
    pixel ceiling (``image.detail_max_pixels``); explicit bounds win over it. Whether they lie
    within the deployment's bounds is checked at the edge (serving.preprocess.sources)."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] = "auto"
    # one visual token is a 28x28 block: fewer pixels cannot make an image
    min_pixels: int | None = Field(default=None, ge=28 * 28)
    max_pixels: int | None = Field(default=None, ge=28 * 28)

    @field_validator("max_pixels")
    @classmethod
    def _max_not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_pixels")
        if value is not None and low is not None and value < low:
            raise ValueError(f"max_pixels ({value}) must not be below min_pixels ({low})")
        return value


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _string_form(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


def _check_part_type(value: Any) -> Any:
    if isinstance(value, dict):
        part_type = value.get("type")
        if part_type not in SUPPORTED_PART_TYPES:
            raise ValueError(f"unsupported content part type {part_type!r}; "
                             f"supported: {', '.join(SUPPORTED_PART_TYPES)}")
    return value


def _text_only_parts(value: Any, role: str) -> Any:
    if isinstance(value, list):
        for part in value:
            _check_part_type(part)
            if isinstance(part, dict) and part.get("type") == "image_url":
                raise ValueError(f"{role} messages may hold text parts only")
    return value


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        return _text_only_parts(value, "system")


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("content must not be an empty list")
            for part in value:
                _check_part_type(part)
        return value


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        return _text_only_parts(value, "assistant")


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = False


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat,
                           Field(discriminator="type")]
MAX_TOP_LOGPROBS = 20


# vLLM's request fields this server does not take (vLLM's ChatCompletionRequest has them; a
# test compares the two models, so a vLLM upgrade that adds or drops one shows up): tools are
# not supported yet; vLLM's own structured_outputs field is covered by OpenAI's
# response_format; the others change how the prompt is built or what the server returns (we
# render the model's own template, once) or are vLLM-internal.
VLLM_FIELDS_NOT_ACCEPTED = frozenset({
    "tools", "tool_choice", "parallel_tool_calls", "structured_outputs",
    "prompt_logprobs", "logprob_token_ids", "reasoning_effort",
    "thinking_token_budget", "include_reasoning", "use_beam_search", "length_penalty",
    "watermarking", "truncation_side", "allowed_token_ids",
    "bad_words", "echo", "add_generation_prompt", "continue_final_message",
    "add_special_tokens", "documents", "chat_template", "chat_template_kwargs",
    "media_io_kwargs", "mm_processor_kwargs", "request_id", "session_id",
    "return_tokens_as_token_ids", "return_token_ids", "routed_experts_prompt_start",
    "return_token_offsets", "return_prompt_text", "mm_payload", "return_mm_kwargs",
    "cache_salt", "kv_transfer_params", "ec_transfer_params", "vllm_xargs",
    "repetition_detection", "stream_interval",
})
# Our own fields (the reasoning controls), which vLLM's server does not know.
QVQ_FIELDS = frozenset({"split_reasoning", "loop_guard", "max_reasoning_tokens",
                        "include_language_stats"})


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(
        default=None, ge=-(2**63), le=2**63 - 1,
        description="Sampling seed; vLLM seeds a torch generator with it, so it must fit int64.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, description="Choices to generate for the prompt (up to the "
                                                "deployment's requests.max_choices).")
    response_format: ResponseFormat | None = Field(
        default=None, description="text, json_object or json_schema: the answer is decoded "
                                  "under the schema (after free reasoning in split mode).")
    logprobs: bool = Field(default=False, description="Return each generated token's log "
                                                      "probability.")
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="Most likely alternatives per token (needs "
                                                 "logprobs).")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None
    # QVQ reasoning extensions (send with the openai client's extra_body); None: config default
    split_reasoning: bool | None = Field(
        default=None, description="Reasoning in message.reasoning_content, conclusion in "
                                  "message.content.")
    loop_guard: Literal["off", "detect", "stop"] | None = Field(
        default=None, description="Circular-reasoning guard for this request.")
    max_reasoning_tokens: int | None = Field(
        default=None, ge=1, description="Thinking budget: reasoning tokens before the model is "
                                        "asked to conclude.")
    include_language_stats: bool | None = Field(
        default=None, description="Add script-mix counts (choices[0].qvq.language).")
    # OpenAI's logit_bias and vLLM's sampling extensions (the openai client sends the latter
    # in extra_body, as it does for vLLM's own server)
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (as a string) -> bias from -100 to 100 added to "
                                  "its logit before sampling.")
    min_tokens: int = Field(default=0, ge=0,
                            description="Tokens generated before EOS or a stop token may end "
                                        "the answer.")
    ignore_eos: bool = Field(default=False,
                             description="Keep generating past the end-of-sequence token.")
    top_k: int | None = Field(default=None, ge=-1,
                              description="Sample from the k most likely tokens; 0 or -1: all.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0,
                                description="Drop tokens less likely than min_p times the most "
                                            "likely one.")
    repetition_penalty: float | None = Field(
        default=None, gt=0.0, le=2.0,
        description="Above 1 discourages tokens already in the prompt or the answer; 1: off.")
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, max_length=MAX_STOP_TOKEN_IDS,
        description="Token ids that end the answer, like stop strings.")
    include_stop_str_in_output: bool = Field(
        default=False, description="Keep the matched stop string at the end of the text.")
    skip_special_tokens: bool = Field(
        default=True, description="Leave special tokens out of the text.")
    spaces_between_special_tokens: bool = Field(
        default=True, description="Put spaces between special tokens in the text.")
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=-1, description="Keep only the last k prompt tokens (-1: as many as "
                                         "the context allows); never cuts into an image.")
    priority: int | None = Field(
        default=None, ge=-1000, le=1000,
        description="Scheduling priority, lower first (0 by default); only for API keys "
                    "listed in requests.priority_key_ids.")

    @field_validator("messages", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, msg in enumerate(value):
                role = msg.get("role") if isinstance(msg, dict) else None
                if role not in ("system", "user", "assistant"):
                    raise ValueError(f"messages[{i}]: unsupported role {role!r}; "
                                     "supported: system, user, assistant")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if len(value) > MAX_LOGIT_BIAS_TOKENS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_TOKENS} tokens may be biased")
        for token, bias in value.items():
            if not token.isdigit() or not token.isascii() or len(token) > 9:
                raise ValueError("keys must be token ids such as \"1234\"; got "
                                 f"{elide(token, 40)!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias of token {token} must be between -100 and 100")
        return value

    @model_validator(mode="after")
    def _min_tokens(self) -> ChatCompletionRequest:
        limit = self.requested_max_tokens
        if limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens "
                             f"({limit})")
        return self

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def logprobs_count(self) -> int | None:
        """Alternatives per token the engine must return (None: no logprobs at all)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def structured(self) -> JsonObjectFormat | JsonSchemaFormat | None:
        """The JSON constraint of this request, if any (``text`` is no constraint)."""
        rf = self.response_format
        return None if rf is None or isinstance(rf, TextFormat) else rf

    @model_validator(mode="after")
    def _stream_options(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must be from the user or system")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def without_image_data(self) -> ChatCompletionRequest:
        """A copy whose image URLs are replaced by ``image:<n>`` placeholders.

        The generator only needs to know where images sit in the conversation (it receives the
        pixels separately), so multi-megabyte data URLs are not shipped to it a second time.
        """
        count = 0

        def strip(msg: Message) -> Message:
            nonlocal count
            if not isinstance(msg, UserMessage) or isinstance(msg.content, str):
                return msg
            parts: list[TextPart | ImagePart] = []
            for part in msg.content:
                if isinstance(part, ImagePart):
                    part = ImagePart(type="image_url",
                                     image_url=ImageURL(url=f"image:{count}",
                                                        detail=part.image_url.detail))
                    count += 1
                parts.append(part)
            return msg.model_copy(update={"content": parts})

        return self.model_copy(update={"messages": [strip(m) for m in self.messages]})

    def image_urls(self) -> list[str]:
        return [part.image_url.url for msg in self.messages if isinstance(msg, UserMessage)
                and isinstance(msg.content, list)
                for part in msg.content if isinstance(part, ImagePart)]


class BatchCreateRequest(_Strict):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and (len(value) > 16 or any(len(k) > 64 or len(v) > 512
                                             for k, v in value.items())):
            raise ValueError("at most 16 metadata keys, keys up to 64 and values up to 512 "
                             "characters")
        return value


# --------------------------------------------------------------------------- responses


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """OpenAI's ``choices[].logprobs``; in split mode the reasoning tokens' entries are in
    ``reasoning_content`` (our extension), so the two lists together hold one entry per
    completion token."""

    content: list[TokenLogprob] | None
    reasoning_content: list[TokenLogprob] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | None = None  # why generation ended early: "loop_detected"
    qvq: dict[str, Any] | None = None  # reasoning report (final answer, boxes, loop, budget)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | None = None
    qvq: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qvq-serving"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def list_page(items: list[Any], *, limit: int, after: str | None, what: str,
              render: Any) -> dict[str, Any]:
    """OpenAI's list object over ``items`` (already in listing order, each with an ``id``):
    the ``limit`` after the one named ``after``; ``render`` makes each entry's JSON."""
    if after:
        ids = [item.id for item in items]
        if after not in ids:
            raise InvalidRequestError(f"after={after!r} is not a {what} in this listing",
                                      param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": [render(item) for item in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None, "has_more": len(items) > limit}


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
