"""Coalescing a token stream for its trip across a Ray hop.

Every item a Serve streaming call yields is one message between two processes (pickled, sent,
unpickled, and on the far side one more await). One item per engine step per request makes
that cost grow with tokens times concurrency; the engine's own decode then competes with it for
CPU. :func:`coalesce` sends whatever is ready at most once per ``interval_s`` instead, with
consecutive deltas merged into one: the first item goes at once (time to first token is not
delayed), and a quiet stream is not delayed either (an item waits only when the previous one
left less than ``interval_s`` ago).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace

from serving.messages import GenerationEvent

_END = object()


def merge_deltas(events: list[GenerationEvent]) -> tuple[GenerationEvent, ...]:
    """Consecutive ``delta`` events of one choice become one (text, reasoning and their
    logprobs concatenated, in order); other events keep their place."""
    out: list[GenerationEvent] = []
    for event in events:
        last = out[-1] if out else None
        if event.kind == "delta" and last is not None and last.kind == "delta" \
                and last.index == event.index \
                and not (last.text and event.reasoning):  # reasoning never follows content
            out[-1] = replace(last, text=last.text + event.text,
                              reasoning=last.reasoning + event.reasoning,
                              logprobs=last.logprobs + event.logprobs,
                              reasoning_logprobs=last.reasoning_logprobs
                              + event.reasoning_logprobs)
        else:
            out.append(event)
    return tuple(out)


async def coalesce(events: AsyncIterator[GenerationEvent],
                   interval_s: float) -> AsyncIterator[tuple[GenerationEvent, ...]]:
    """Batches of ``events``, at most one per ``interval_s`` (0: one per event, unmerged).

    The source is read by a task of its own, so it keeps running while a batch waits; closing
    this generator cancels that task, which closes the source (and so aborts the engine
    request). An exception in the source is raised here after the events before it.
    """
    if interval_s <= 0:
        async with aclosing(events) as source:
            async for event in source:
                yield (event,)
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async with aclosing(events) as source:
                async for event in source:
                    queue.put_nowait(event)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_END)

    reader = asyncio.create_task(pump())
    sent_at = -float("inf")
    try:
        while True:
            first = await queue.get()
            pending = [first]
            wait = sent_at + interval_s - time.monotonic()
            if wait > 0 and first is not _END and not isinstance(first, Exception):
                await asyncio.sleep(wait)
            while not queue.empty():
                pending.append(queue.get_nowait())
            stop = next((i for i, e in enumerate(pending)
                         if e is _END or isinstance(e, Exception)), None)
            ready = pending if stop is None else pending[:stop]
            if ready:
                yield merge_deltas(ready)
                sent_at = time.monotonic()
            if stop is not None:
                if isinstance(pending[stop], Exception):
                    raise pending[stop]
                return
    finally:
        reader.cancel()  # closes the source at its next await: the engine request is aborted
