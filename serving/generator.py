"""QVQGenerator: one vLLM engine per replica, fed pre-resized images, streaming events.

Two entry points so the common case stays one hop: ``complete`` returns a whole completion;
``stream`` yields :class:`~serving.protocol.GenerationEvent` items and always starts with an
``accepted`` event, which the router awaits before it sends HTTP headers, so a request the
generator rejects still gets a proper error status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence

from ray import serve

from serving.config import ServingConfig
from serving.engine.protocol import Engine, SamplingOptions
from serving.engine.vllm_engine import VLLMEngine, engine_env
from serving.prompt import PromptBuilder, RenderedPrompt
from serving.protocol import GenerationEvent, GenerationRequest, PreparedImage

logger = logging.getLogger("qvq.generator")

EngineFactory = Callable[[ServingConfig], Engine]

LIVE_PRIORITY = 0
BATCH_PRIORITY = 10  # vLLM serves lower values first


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class QVQGenerator:
    def __init__(self, config: ServingConfig, engine_factory: EngineFactory | None = None):
        self._config = config
        self._prompts = PromptBuilder(config.model, _load_tokenizer(config.model.path))
        self._engine: Engine = (engine_factory or VLLMEngine)(config)
        self._in_flight = {"live": 0, "batch": 0}

    def _options(self, request: GenerationRequest, rendered: RenderedPrompt) -> SamplingOptions:
        chat = request.chat
        return SamplingOptions(
            max_tokens=rendered.max_tokens, temperature=chat.temperature, top_p=chat.top_p,
            stop=tuple(chat.stop or ()), seed=chat.seed,
            presence_penalty=chat.presence_penalty, frequency_penalty=chat.frequency_penalty)

    async def stream(self, request: GenerationRequest,
                     images: Sequence[PreparedImage]) -> AsyncIterator[GenerationEvent]:
        rendered = self._prompts.render(request.chat, images)
        yield GenerationEvent("accepted", prompt_tokens=rendered.num_tokens,
                              image_cache=tuple(i.cache for i in images))
        self._in_flight["live"] += 1
        try:
            async for step in self._engine.generate(rendered.token_ids, images,
                                                    self._options(request, rendered),
                                                    request.request_id):
                if step.finish_reason is not None:
                    yield GenerationEvent("final", text=step.text,
                                          prompt_tokens=step.prompt_tokens,
                                          completion_tokens=step.completion_tokens,
                                          finish_reason=step.finish_reason)
                elif step.text:
                    yield GenerationEvent("delta", text=step.text)
        finally:
            self._in_flight["live"] -= 1

    async def complete(self, request: GenerationRequest, images: Sequence[PreparedImage],
                       priority: int = LIVE_PRIORITY) -> GenerationEvent:
        """The whole completion as one ``final`` event (text, counts, finish reason).

        ``priority``: LIVE_PRIORITY for API traffic, BATCH_PRIORITY for batch jobs, which
        the engine's scheduler serves after live requests.
        """
        rendered = self._prompts.render(request.chat, images)
        parts: list[str] = []
        final = None
        kind = "live" if priority == LIVE_PRIORITY else "batch"
        self._in_flight[kind] += 1
        try:
            async for step in self._engine.generate(rendered.token_ids, images,
                                                    self._options(request, rendered),
                                                    request.request_id, priority=priority):
                parts.append(step.text)
                final = step
        finally:
            self._in_flight[kind] -= 1
        if final is None:  # pragma: no cover - vLLM always ends with a finished output
            raise RuntimeError("engine produced no output")
        return GenerationEvent("final", text="".join(parts), prompt_tokens=final.prompt_tokens,
                               completion_tokens=final.completion_tokens,
                               finish_reason=final.finish_reason or "stop",
                               image_cache=tuple(i.cache for i in images))

    async def check_health(self) -> None:
        """Serve's periodic health check: raises when the engine is dead, so Serve replaces us."""
        await self._engine.check_health()

    async def load(self) -> dict[str, int]:
        """Requests in flight on this replica, live and batch (the batch runner backs off)."""
        return dict(self._in_flight)

    async def probe(self) -> str:
        """On-demand probe for the router's /health: asks the engine now, not a cached flag."""
        await self._engine.check_health()
        return "ok"

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - best effort during teardown
                pass


def generator_deployment(config: ServingConfig) -> serve.Deployment:
    dep = config.deployments.generator
    tp = config.model.tensor_parallel_size
    actor_options: dict = {**dep.actor_options(),
                           "runtime_env": {"env_vars": engine_env(config)}}
    if dep.accelerator_type:
        actor_options["accelerator_type"] = dep.accelerator_type
    options: dict = {}
    if tp > 1:
        # The replica itself holds bundle 0 (CPU only); vLLM's TP workers take the GPU bundles.
        # STRICT_PACK keeps a replica's GPUs on one node, where NVLink joins them.
        worker = {"GPU": dep.num_gpus_per_worker, "CPU": 1}
        # The replica's custom resources must fit in its own bundle.
        replica = {"CPU": dep.num_cpus, **dep.resources}
        if "memory" in actor_options:
            replica["memory"] = actor_options["memory"]
        options["placement_group_bundles"] = [replica] + [worker] * tp
        options["placement_group_strategy"] = "STRICT_PACK"
    else:
        actor_options["num_gpus"] = dep.num_gpus_per_worker
    return serve.deployment(
        QVQGenerator, name="QVQGenerator",
        ray_actor_options=actor_options,
        max_ongoing_requests=dep.max_ongoing_requests,
        autoscaling_config=dep.autoscaling.to_serve(),
        logging_config={"enable_access_log": bool(dep.access_log)},
        health_check_period_s=10, health_check_timeout_s=30,
        graceful_shutdown_timeout_s=60,
        **options,
    )
