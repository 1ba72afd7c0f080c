"""QVQGenerator: one vLLM engine per replica, fed pre-resized images, streaming events.

Two entry points so the common case stays one hop: ``complete`` returns a whole completion;
``stream`` yields batches of :class:`~serving.protocol.GenerationEvent` items (coalesced, see
:mod:`serving.generate.streaming`) and always starts with an ``accepted`` event alone, which
the router awaits before it sends HTTP headers, so a request the generator rejects still gets
a proper error status.

Reasoning operations run here, on the token stream, for live and batch traffic alike: the
final-answer split, the loop guard (which can abort generation) and the thinking budget (which
ends the reasoning pass and starts a short answer pass after QVQ's final-answer cue; prefix
caching makes the second pass reuse the first pass's KV blocks).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace

from ray import serve

from serving.config import ServingConfig
from serving.errors import InvalidRequestError
from serving.generate.engine.args import engine_env
from serving.generate.engine.protocol import Engine, JsonConstraint, SamplingOptions
from serving.generate.engine.vllm_engine import VLLMEngine
from serving.generate.prompt import PromptBuilder, RenderedPrompt
from serving.generate.reasoning.session import Next, ReasoningSession
from serving.generate.reasoning.vocab import filler_token_ids
from serving.generate.streaming import coalesce
from serving.logs import route_to_serve_logs
from serving.messages import (
    LIVE_PRIORITY,
    Completion,
    GenerationEvent,
    GenerationRequest,
    PreparedImage,
    forced,
)
from serving.metrics import GeneratorMetrics
from serving.protocol import ChatCompletionRequest, JsonSchemaFormat
from serving.roles import GENERATOR

logger = logging.getLogger("qvq.generator")

EngineFactory = Callable[[ServingConfig], Engine]



def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class QVQGenerator:
    def __init__(self, config: ServingConfig, engine_factory: EngineFactory | None = None):
        route_to_serve_logs()
        self._config = config
        tokenizer = _load_tokenizer(config.model.path)
        self._tokenizer = tokenizer
        self._prompts = PromptBuilder(config.model, tokenizer)
        self._filler_ids = filler_token_ids(tokenizer)
        self._cue_ids = tuple(tokenizer.encode(config.reasoning.final_answer_cue,
                                               add_special_tokens=False))
        self._cue_tokens = tuple(tokenizer.decode([token]) for token in self._cue_ids)
        self._metrics = GeneratorMetrics(config.model.served_name)
        self._engine: Engine = (engine_factory or VLLMEngine)(config)
        # Everything loaded so far (torch, transformers, vLLM, the tokenizer) lives as long as
        # the replica: out of the collector's reach, a full collection no longer walks it and
        # pauses every stream of this replica (as vLLM's own engine process does at start).
        gc.collect()
        gc.freeze()
        self._in_flight = {"live": 0, "batch": 0}
        self._stream_interval_s = config.deployments.generator.stream_interval_ms / 1000

    def _options(self, request: GenerationRequest, rendered: RenderedPrompt) -> SamplingOptions:
        chat = request.chat
        return SamplingOptions(
            max_tokens=rendered.max_tokens, temperature=chat.temperature, top_p=chat.top_p,
            stop=tuple(chat.stop or ()), seed=chat.seed,
            presence_penalty=chat.presence_penalty, frequency_penalty=chat.frequency_penalty,
            min_tokens=chat.min_tokens, ignore_eos=chat.ignore_eos,
            logit_bias=self._logit_bias(chat.logit_bias), top_k=chat.top_k, min_p=chat.min_p,
            repetition_penalty=chat.repetition_penalty,
            stop_token_ids=self._known_tokens(chat.stop_token_ids or (), "stop_token_ids"),
            include_stop_str_in_output=chat.include_stop_str_in_output,
            skip_special_tokens=chat.skip_special_tokens,
            spaces_between_special_tokens=chat.spaces_between_special_tokens,
            logprobs=chat.logprobs_count, json=self._json_constraint(chat))

    def _json_constraint(self, chat: ChatCompletionRequest) -> JsonConstraint | None:
        fmt = chat.structured
        if fmt is None:
            return None
        schema = fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat) else None
        return JsonConstraint(schema=None if schema is None else json.dumps(schema))

    def _logit_bias(self, bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
        if not bias:
            return ()
        pairs = tuple((int(token), value) for token, value in bias.items())
        self._known_tokens([token for token, _ in pairs], "logit_bias")
        return pairs

    def _known_tokens(self, ids: Sequence[int], param: str) -> tuple[int, ...]:
        """Token ids checked against this model's vocabulary before the request is accepted
        (the engine would only find out after a stream's headers were sent)."""
        vocab = len(self._tokenizer)
        unknown = [token for token in ids if token >= vocab]
        if unknown:
            raise InvalidRequestError(f"{param} names token id {unknown[0]}, outside this "
                                      f"model's vocabulary (ids 0 to {vocab - 1})",
                                      param=param)
        return tuple(ids)

    async def _generate(self, request: GenerationRequest, images: Sequence[PreparedImage],
                        tier: int) -> AsyncIterator[GenerationEvent]:
        """accepted, then each choice's deltas (reasoning and/or content) and its final event.

        The prompt is rendered and the options checked once for all ``n`` choices; each choice
        is its own engine request (prefix caching shares the prompt's KV between them), so
        the reasoning operations run per choice. ``tier``: LIVE_PRIORITY or BATCH_PRIORITY,
        to which the request's own priority is added.
        """
        started = time.monotonic()
        rendered = self._prompts.render(request.chat, images)
        sampling = self._options(request, rendered)
        self._engine.check(sampling)  # a schema the engine cannot compile is a 400, here
        yield GenerationEvent("accepted", prompt_tokens=rendered.num_tokens,
                              image_cache=tuple(i.cache for i in images))
        priority = tier + request.priority
        n = request.chat.n
        if n == 1:
            async with aclosing(self._choice(0, request, rendered, sampling, images, priority,
                                             started)) as events:
                async for event in events:
                    yield event
            return
        choices = [self._choice(i, request, rendered, replace(sampling, seed=choice_seed(
            sampling.seed, i)), images, priority, started) for i in range(n)]
        async with aclosing(interleave(choices)) as events:
            async for event in events:
                yield event

    async def _choice(self, index: int, request: GenerationRequest, rendered: RenderedPrompt,
                      sampling: SamplingOptions, images: Sequence[PreparedImage],
                      priority: int, started: float) -> AsyncIterator[GenerationEvent]:
        """One choice: deltas, then its final event. One engine pass, or two: when the
        thinking budget runs out (the second continues after the final-answer cue), and with
        a JSON response_format in split mode (free reasoning, then the answer under the
        schema after the marker the model wrote, or after the cue)."""
        options = request.reasoning  # resolved once, at the edge
        session = ReasoningSession(options, self._filler_ids)
        prompt_tokens, finish_reason = rendered.num_tokens, None
        first_token_at = queue_s = None
        action = Next.CONTINUE
        request_id = request.request_id if index == 0 else f"{request.request_id}-{index}"
        first = sampling
        if options.reason_then_schema:
            reserve = min(options.schema_answer_tokens, sampling.max_tokens // 2)
            budget = max(1, sampling.max_tokens - reserve)
            first = replace(sampling, json=None, max_tokens=budget,
                            min_tokens=min(sampling.min_tokens, budget))
        passes = [(rendered.token_ids, first, request_id)]
        while passes:
            prompt_ids, pass_sampling, engine_request_id = passes.pop()
            async with aclosing(self._engine.generate(prompt_ids, images, pass_sampling,
                                                      engine_request_id,
                                                      priority=priority)) as steps:
                async for step in steps:
                    if engine_request_id == request_id:
                        prompt_tokens = step.prompt_tokens or prompt_tokens
                        queue_s = step.queue_s if step.queue_s is not None else queue_s
                    if first_token_at is None and step.token_ids:
                        first_token_at = time.monotonic()
                    reasoning_tokens = options.split and session.in_reasoning
                    deltas, action = session.feed(step.text, step.token_ids)
                    if deltas or step.logprobs:
                        yield GenerationEvent(
                            "delta", text=deltas.content, reasoning=deltas.reasoning,
                            index=index,
                            logprobs=() if reasoning_tokens else step.logprobs,
                            reasoning_logprobs=step.logprobs if reasoning_tokens else ())
                    finish_reason = step.finish_reason
                    if action is not Next.CONTINUE and finish_reason is None:
                        break  # closing the steps aborts the request in the engine
            reasoning_pass = options.reason_then_schema and not session.answer_pass
            if action is Next.STOP_LOOP:
                finish_reason = "length"  # cut short, as by max_tokens; stop_reason says why
            elif reasoning_pass or (action is Next.CONCLUDE and finish_reason is None):
                finish_reason = "length"
                if action is not Next.ANSWER:  # no marker written: the cue ends the reasoning
                    if rendered.max_tokens - session.completion_tokens < len(self._cue_ids):
                        continue
                    deltas = session.inject_cue(options.final_answer_cue, self._cue_ids)
                    cue = tuple(forced(token) for token in self._cue_tokens) \
                        if sampling.logprobs is not None else ()
                    yield GenerationEvent("delta", text=deltas.content,
                                          reasoning=deltas.reasoning, index=index, logprobs=cue)
                room = rendered.max_tokens - session.completion_tokens
                if room >= 1:
                    if reasoning_pass:
                        session.start_answer_pass()
                        budget, suffix = room, "answer"
                    else:
                        budget, suffix = min(options.answer_budget_tokens, room), "conclude"
                    answer = replace(sampling, max_tokens=budget, min_tokens=min(
                        budget, max(0, sampling.min_tokens - session.completion_tokens)))
                    passes.append((rendered.token_ids + session.generated_ids, answer,
                                   f"{request_id}-{suffix}"))
        deltas, outcome = session.finish()
        if deltas:
            yield GenerationEvent("delta", text=deltas.content, reasoning=deltas.reasoning,
                                  index=index)
        self._metrics.record(outcome)
        logger.info("%s done: %d prompt + %d completion tokens (%d reasoning), finish %s%s",
                    request_id, prompt_tokens, session.completion_tokens,
                    outcome.reasoning_tokens, finish_reason or "stop",
                    f", loop {outcome.loop_action} (period {outcome.loop.period})"
                    if outcome.loop else "")
        self._metrics.record_timing(
            ttft_s=None if first_token_at is None else first_token_at - started,
            generation_s=None if first_token_at is None else time.monotonic() - first_token_at,
            queue_s=queue_s)
        yield GenerationEvent("final", prompt_tokens=prompt_tokens,
                              completion_tokens=session.completion_tokens,
                              finish_reason=finish_reason or "stop", outcome=outcome,
                              image_cache=tuple(i.cache for i in images), index=index)

    async def live_events(self, request: GenerationRequest,
                          images: Sequence[PreparedImage]) -> AsyncIterator[GenerationEvent]:
        """:meth:`_generate` at live priority, counted as live load (the batch runner backs
        off while there is some)."""
        self._in_flight["live"] += 1
        try:
            async with aclosing(self._generate(request, images, LIVE_PRIORITY)) as events:
                async for event in events:
                    yield event
        finally:
            self._in_flight["live"] -= 1

    async def stream(self, request: GenerationRequest,
                     images: Sequence[PreparedImage]) -> AsyncIterator[tuple[GenerationEvent, ...]]:
        """A live stream for a caller across a Ray hop (the router, with chat_entry router):
        the events in batches (:func:`serving.generate.streaming.coalesce`), ``(accepted,)`` first,
        then at most one batch per ``stream_interval_ms``."""
        async with aclosing(coalesce(self.live_events(request, images),
                                     self._stream_interval_s)) as batches:
            async for batch in batches:
                yield batch

    async def complete(self, request: GenerationRequest, images: Sequence[PreparedImage],
                       priority: int = LIVE_PRIORITY) -> Completion:
        """The whole completion: each choice's ``final`` event with its text, reasoning,
        logprobs, counts and report.

        ``priority``: LIVE_PRIORITY for API traffic, BATCH_PRIORITY for batch jobs, which
        the engine's scheduler serves after live requests. In split mode an answer without a
        final-answer marker keeps all its text in ``content`` (the report says so).
        """
        kind = "live" if priority == LIVE_PRIORITY else "batch"
        parts: dict[int, list[GenerationEvent]] = {}
        finals: dict[int, GenerationEvent] = {}
        self._in_flight[kind] += 1
        try:
            async with aclosing(self._generate(request, images, priority)) as events:
                async for event in events:
                    if event.kind == "delta":
                        parts.setdefault(event.index, []).append(event)
                    elif event.kind == "final":
                        finals[event.index] = event
        finally:
            self._in_flight[kind] -= 1
        if len(finals) != request.chat.n:  # pragma: no cover - every choice ends with a final
            raise RuntimeError("engine produced no output")
        return Completion(tuple(_assembled(finals[i], parts.get(i, []))
                                for i in range(request.chat.n)))

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


def _assembled(final: GenerationEvent, deltas: Sequence[GenerationEvent]) -> GenerationEvent:
    """A choice's final event with the text, reasoning and logprobs of its deltas."""
    text = "".join(d.text for d in deltas)
    thoughts = "".join(d.reasoning for d in deltas)
    logprobs = tuple(lp for d in deltas for lp in d.logprobs)
    reasoning_logprobs = tuple(lp for d in deltas for lp in d.reasoning_logprobs)
    if final.outcome.split and not final.outcome.final_answer_found:
        text, thoughts = thoughts + text, ""
        logprobs, reasoning_logprobs = reasoning_logprobs + logprobs, ()
    return replace(final, text=text, reasoning=thoughts, logprobs=logprobs,
                   reasoning_logprobs=reasoning_logprobs)


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice ``index``'s seed: distinct choices from one seeded request, each reproducible
    (kept within int64, which vLLM's generator takes)."""
    if seed is None:
        return None
    return seed + index if seed + index < 2**63 else seed - index


async def interleave(streams: Sequence[AsyncIterator[GenerationEvent]]
                     ) -> AsyncIterator[GenerationEvent]:
    """The events of several choices as they come. Closing this cancels every stream (which
    aborts their engine requests); the first error of any stream is raised here."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(stream: AsyncIterator[GenerationEvent]) -> None:
        try:
            async with aclosing(stream):
                async for event in stream:
                    queue.put_nowait(event)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(done)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is done:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def generator_deployment(config: ServingConfig) -> serve.Deployment:
    """The QVQGenerator deployment. With ``server.chat_entry: generator`` its replicas are
    also the HTTP ingress of ``/v1/chat/completions`` (:mod:`serving.api.chat`): the deployment is
    the ingress of an application at ``/v1/chat`` (:mod:`serving.roles`)."""
    dep = config.deployments.generator
    tp = config.model.tensor_parallel_size
    actor_options: dict = {**dep.actor_options(),
                           "runtime_env": {"env_vars": engine_env(config)}}
    if dep.accelerator_type:
        actor_options["accelerator_type"] = dep.accelerator_type
    options: dict = {}
    device = {dep.worker_resource: dep.num_gpus_per_worker} if dep.num_gpus_per_worker else {}
    if tp > 1:
        # The replica itself holds bundle 0 (CPU only); vLLM's TP workers take the device
        # bundles (vLLM's Ray executor places them by the platform's device resource, GPU).
        # STRICT_PACK keeps a replica's GPUs on one node, where NVLink joins them.
        worker = {**device, "CPU": 1}
        # The replica's custom resources must fit in its own bundle.
        replica = {"CPU": dep.num_cpus, **dep.resources}
        if "memory" in actor_options:
            replica["memory"] = actor_options["memory"]
        options["placement_group_bundles"] = [replica] + [worker] * tp
        options["placement_group_strategy"] = "STRICT_PACK"
    elif dep.worker_resource == "GPU":
        actor_options["num_gpus"] = dep.num_gpus_per_worker
    else:
        actor_options["resources"] = {**actor_options.get("resources", {}), **device}
    ingress = config.server.chat_entry == "generator"
    cls = _chat_ingress() if ingress else QVQGenerator
    return serve.deployment(
        cls, name=GENERATOR,
        **{**dep.serve_options(log_encoding=config.server.log_encoding,
                               access_log_default=ingress),
           "ray_actor_options": actor_options},
        health_check_period_s=10, health_check_timeout_s=30,
        graceful_shutdown_timeout_s=60,
        **options,
    )


def _chat_ingress() -> type:
    """QVQGenerator serving chat completions itself: generation runs in this process
    (:class:`serving.api.chat.LocalGeneration`), images come from the preprocessor. Serve
    builds the app after the constructor (``__serve_build_asgi_app__``), so it holds this
    replica's own services."""
    from serving.api.chat import LocalGeneration
    from serving.api.ingress import build_chat_app
    from serving.roles import limiter_handle, preprocessor_handle

    @serve.ingress()
    class QVQGeneratorIngress(QVQGenerator):
        def __init__(self, config: ServingConfig, engine_factory: EngineFactory | None = None):
            super().__init__(config, engine_factory)
            generation = LocalGeneration(self, preprocessor_handle(config),
                                         config.server.replica_failure_retries)
            self._app = build_chat_app(config, generation, limiter_handle(config))

        def __serve_build_asgi_app__(self):
            return self._app

    return QVQGeneratorIngress
