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
from serving.generate.engine.protocol import EngineStep, SamplingOptions
from serving.protocol import PreparedImage

logger = logging.getLogger("qvq.engine")


def engine_env(config: ServingConfig) -> dict[str, str]:
    """Environment the engine process needs: caches inside the data dir, CPU KV cache size.

    A relative ``data_dir`` is resolved by each replica against its own working directory, so
    the same config works on a laptop and in a cluster whose nodes have other paths.
    """
    data = config.data_dir
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(config.model.cpu_kv_cache_gib),
        "VLLM_CACHE_ROOT": os.path.join(data, "cache", "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(data, "cache", "inductor"),
        "HF_HOME": os.path.join(data, "cache", "hf"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM's own logging setup (dictConfig) closes every existing handler, Serve's replica
        # log file included; its records go through Serve's logger instead (serving.logs)
        "VLLM_CONFIGURE_LOGGING": "0",
    }


def _queue_seconds(out) -> float | None:
    stats = getattr(out, "metrics", None)
    queued, scheduled = getattr(stats, "queued_ts", 0.0), getattr(stats, "scheduled_ts", 0.0)
    return scheduled - queued if queued and scheduled else None


class VLLMEngine:
    def __init__(self, config: ServingConfig):
        for key, value in engine_env(config).items():
            os.environ.setdefault(key, value)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        model = config.model
        args = AsyncEngineArgs(
            model=model.path,
            served_model_name=[model.served_name],
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            max_num_seqs=model.max_num_seqs,
            max_num_batched_tokens=model.max_num_batched_tokens,
            tensor_parallel_size=model.tensor_parallel_size,
            distributed_executor_backend="ray" if model.tensor_parallel_size > 1 else None,
            gpu_memory_utilization=model.gpu_memory_utilization,
            enforce_eager=model.enforce_eager,
            enable_prefix_caching=model.enable_prefix_caching,
            seed=model.seed,
            scheduling_policy=model.scheduling_policy,
            limit_mm_per_prompt={"image": max(config.image.max_images_per_request, 1),
                                 "video": 0},
            # Images arrive already on the grid; the same bounds make vLLM's own resize a no-op.
            mm_processor_kwargs={"min_pixels": config.image.min_pixels,
                                 "max_pixels": config.image.max_pixels},
            disable_log_stats=False,
        )
        before = reaper.descendants()
        self._engine = AsyncLLM.from_engine_args(args)
        # vLLM's engine processes do not watch this one: take them down with it however it ends
        self._reaper = reaper.watch(reaper.children_started_by(before))

    async def generate(self, prompt_token_ids: list[int], images: Sequence[PreparedImage],
                       options: SamplingOptions, request_id: str,
                       priority: int = 0) -> AsyncIterator[EngineStep]:
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        completion_tokens = 0
        try:
            params = SamplingParams(
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
                output_kind=RequestOutputKind.DELTA,
            )
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
                                     queue_s=_queue_seconds(out) if out.finished else None)
        except ValueError as exc:  # vLLM's input validation: message is about the request
            raise InvalidRequestError(str(exc)) from None
        except (EngineDeadError, EngineGenerateError) as exc:
            logger.error("engine failed on %s: %r", request_id, exc)
            raise ServiceUnavailableError("The generation engine failed; retry shortly.",
                                          code="engine_unavailable") from None

    async def check_health(self) -> None:
        await self._engine.check_health()

    def shutdown(self) -> None:
        self._engine.shutdown()
