"""vLLM AsyncLLM behind the engine protocol.

One engine per generator replica. With ``tensor_parallel_size > 1`` vLLM runs its workers as
Ray actors inside the replica's placement group (STRICT_PACK bundles reserved by Serve), so a
replica's GPUs are always on one node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from PIL import Image

from serving.config import ServingConfig
from serving.errors import InvalidRequestError, ServiceUnavailableError
from serving.generate.engine import reaper
from serving.generate.engine.args import engine_env, engine_kwargs
from serving.generate.engine.protocol import EngineStep, SamplingOptions
from serving.messages import Logprob, PreparedImage

logger = logging.getLogger("qvq.engine")


def _queue_seconds(out) -> float | None:
    stats = getattr(out, "metrics", None)
    queued, scheduled = getattr(stats, "queued_ts", 0.0), getattr(stats, "scheduled_ts", 0.0)
    return scheduled - queued if queued and scheduled else None


def _logprobs(step, top: int | None) -> tuple[Logprob, ...]:
    """vLLM's per-position dicts (token id -> logprob, rank, text) as our :class:`Logprob`:
    the sampled token, then the ``top`` most likely ones by rank."""
    if top is None or not step.logprobs:
        return ()
    out = []
    for token_id, position in zip(step.token_ids, step.logprobs, strict=False):
        chosen = position[token_id]
        ranked = sorted((lp for tid, lp in position.items() if lp.rank is not None
                         and lp.rank <= top), key=lambda lp: lp.rank)
        out.append(Logprob(chosen.decoded_token or "", chosen.logprob,
                           tuple((lp.decoded_token or "", lp.logprob) for lp in ranked[:top])))
    return tuple(out)


def share_ray_cluster() -> None:
    """Point vLLM's engine core at this replica's Ray cluster. It runs in a subprocess that
    calls ``ray.init()`` itself, and a Serve replica has no ``RAY_ADDRESS``: without it the
    core would start a Ray instance of its own inside this node, where the replica's
    placement group (the TP workers' bundles) does not exist."""
    import ray

    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


class VLLMEngine:
    def __init__(self, config: ServingConfig):
        for key, value in engine_env(config).items():
            os.environ.setdefault(key, value)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if config.model.tensor_parallel_size > 1:
            share_ray_cluster()
        args = AsyncEngineArgs(**engine_kwargs(config))
        before = reaper.descendants()
        self._engine = AsyncLLM.from_engine_args(args)
        # vLLM's engine processes do not watch this one: take them down with it however it ends
        self._reaper = reaper.watch(reaper.children_started_by(before))

    def _params(self, options: SamplingOptions):
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = None
        if options.json is not None:
            structured = StructuredOutputsParams(
                json=options.json.schema, json_object=None if options.json.schema else True)
        return SamplingParams(
            max_tokens=options.max_tokens,
            temperature=1.0 if options.temperature is None else options.temperature,
            top_p=1.0 if options.top_p is None else options.top_p,
            stop=list(options.stop) or None,
            seed=options.seed,
            presence_penalty=options.presence_penalty or 0.0,
            frequency_penalty=options.frequency_penalty or 0.0,
            min_tokens=options.min_tokens,
            ignore_eos=options.ignore_eos,
            logit_bias=dict(options.logit_bias) or None,
            # vLLM's own defaults when the request leaves them out: all tokens, no min_p,
            # no repetition penalty
            top_k=0 if options.top_k is None else options.top_k,
            min_p=0.0 if options.min_p is None else options.min_p,
            repetition_penalty=(1.0 if options.repetition_penalty is None
                                else options.repetition_penalty),
            stop_token_ids=list(options.stop_token_ids) or None,
            include_stop_str_in_output=options.include_stop_str_in_output,
            skip_special_tokens=options.skip_special_tokens,
            spaces_between_special_tokens=options.spaces_between_special_tokens,
            logprobs=options.logprobs,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )

    def check(self, options: SamplingOptions) -> None:
        """vLLM's own verdict on the options, as its input processor gives it when a request
        arrives (the structured-output backend compiles the schema here)."""
        from vllm.exceptions import VLLMClientError

        processor = self._engine.input_processor
        try:
            params = self._params(options)
            params.verify(processor.model_config, processor.vllm_config.speculative_config,
                          processor.structured_outputs_config, self._engine.tokenizer)
        except (ValueError, VLLMClientError) as exc:
            param = "response_format" if options.json is not None else None
            raise InvalidRequestError(str(exc), param=param) from None

    async def generate(self, prompt_token_ids: list[int], images: Sequence[PreparedImage],
                       options: SamplingOptions, request_id: str,
                       priority: int = 0) -> AsyncIterator[EngineStep]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        completion_tokens = 0
        try:
            params = self._params(options)
            engine_prompt: dict = {"prompt_token_ids": prompt_token_ids}
            if images:
                engine_prompt["multi_modal_data"] = {
                    "image": [Image.fromarray(img.pixels, mode="RGB") for img in images]}
            # aclosing: when our consumer stops early (loop guard, thinking budget, client gone)
            # vLLM's generator is closed at once, which aborts the request in the engine.
            async with aclosing(self._engine.generate(engine_prompt, params, request_id,
                                                      priority=priority)) as outputs:
                async for out in outputs:
                    step = out.outputs[0]
                    completion_tokens += len(step.token_ids)
                    yield EngineStep(text=step.text,
                                     prompt_tokens=len(out.prompt_token_ids or ()),
                                     completion_tokens=completion_tokens,
                                     finish_reason=step.finish_reason if out.finished else None,
                                     token_ids=tuple(step.token_ids),
                                     queue_s=_queue_seconds(out) if out.finished else None,
                                     logprobs=_logprobs(step, options.logprobs))
        except (ValueError, VLLMClientError) as exc:  # vLLM's input validation: about the request
            raise InvalidRequestError(str(exc)) from None
        except (EngineDeadError, EngineGenerateError) as exc:
            logger.error("engine failed on %s: %r", request_id, exc)
            raise ServiceUnavailableError("The generation engine failed; retry shortly.",
                                          code="engine_unavailable") from None

    async def check_health(self) -> None:
        await self._engine.check_health()

    def shutdown(self) -> None:
        self._engine.shutdown()
