"""One check of a chat request, at the edge, for live and batch traffic alike.

:func:`validate_chat` does everything that can refuse a request before any hop: the model,
the reasoning options for this caller (budgets within ceilings, loop-guard overrides), the
image sources (count, scheme, bucket, reference syntax) and each image's pixel bounds (from
``detail`` or explicit bounds, within the deployment's). It returns the
:class:`~serving.messages.GenerationRequest` the generator runs; nothing downstream parses
or resolves any of it again.
"""

from __future__ import annotations

from serving.api.response_format import check_response_format
from serving.config import RequestsConfig, ServingConfig
from serving.errors import InvalidRequestError, ModelNotFoundError
from serving.generate.reasoning.options import resolve_reasoning_options
from serving.messages import GenerationRequest
from serving.preprocess.sources import parse_image_parts
from serving.protocol import (
    ChatCompletionRequest,
    ImagePart,
    ImageURL,
    UserMessage,
    new_completion_id,
)


def check_model(config: ServingConfig, model_id: str) -> None:
    served = config.model.model_ids
    if model_id not in served:
        raise ModelNotFoundError(f"The model {model_id!r} does not exist; this server "
                                 f"serves {sorted(served)}.", param="model")


def check_request_options(config: RequestsConfig, chat: ChatCompletionRequest,
                          key_id: str | None) -> None:
    """What this caller may ask of one request: choices and scheduling priority."""
    if chat.n > config.max_choices:
        raise InvalidRequestError(f"n is {chat.n}; this server generates at most "
                                  f"{config.max_choices} choices per request", param="n")
    if chat.priority is not None and key_id not in config.priority_key_ids:
        raise InvalidRequestError("this API key may not set priority (requests."
                                  "priority_key_ids); remove it", param="priority")


def image_url_parts(chat: ChatCompletionRequest) -> list[tuple[str, ImageURL]]:
    """Each ``image_url`` object of the request, in order, with its param path
    (``messages[0].content[1].image_url``) for the errors that name it."""
    return [(f"messages[{m}].content[{p}].image_url", part.image_url)
            for m, msg in enumerate(chat.messages)
            if isinstance(msg, UserMessage) and isinstance(msg.content, list)
            for p, part in enumerate(msg.content) if isinstance(part, ImagePart)]


def validate_chat(config: ServingConfig, chat: ChatCompletionRequest, key_id: str | None,
                  request_id: str | None = None) -> GenerationRequest:
    """The request the generator runs, or the 4xx that says what to fix."""
    check_model(config, chat.model)
    check_request_options(config.requests, chat, key_id)
    check_response_format(chat, config.requests.structured_output)
    reasoning = resolve_reasoning_options(config.reasoning, chat, key_id)
    images = parse_image_parts(image_url_parts(chat), image=config.image,
                               allowed_buckets=config.storage.allowed_source_buckets)
    return GenerationRequest(request_id=request_id or new_completion_id(),
                             chat=chat.without_image_data() if images else chat,
                             reasoning=reasoning, key_id=key_id, images=images,
                             priority=chat.priority or 0)
