"""One check of a chat request, at the edge, for live and batch traffic alike.

:func:`validate_chat` does everything that can refuse a request before any hop: the model,
the reasoning options for this caller (budgets within ceilings, loop-guard overrides), the
image sources (count, scheme, bucket, reference syntax). It returns the
:class:`~serving.messages.GenerationRequest` the generator runs; nothing downstream parses
or resolves any of it again.
"""

from __future__ import annotations

from serving.config import ServingConfig
from serving.errors import ModelNotFoundError
from serving.generate.reasoning.options import resolve_reasoning_options
from serving.messages import GenerationRequest
from serving.preprocess.sources import parse_image_sources
from serving.protocol import ChatCompletionRequest, new_completion_id


def check_model(config: ServingConfig, model_id: str) -> None:
    served = config.model.model_ids
    if model_id not in served:
        raise ModelNotFoundError(f"The model {model_id!r} does not exist; this server "
                                 f"serves {sorted(served)}.", param="model")


def validate_chat(config: ServingConfig, chat: ChatCompletionRequest, key_id: str | None,
                  request_id: str | None = None) -> GenerationRequest:
    """The request the generator runs, or the 4xx that says what to fix."""
    check_model(config, chat.model)
    reasoning = resolve_reasoning_options(config.reasoning, chat, key_id)
    images = parse_image_sources(chat.image_urls(),
                                 max_images=config.image.max_images_per_request,
                                 allowed_buckets=config.storage.allowed_source_buckets)
    return GenerationRequest(request_id=request_id or new_completion_id(),
                             chat=chat.without_image_data() if images else chat,
                             reasoning=reasoning, key_id=key_id, images=images)
