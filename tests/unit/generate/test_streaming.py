"""coalesce(): batches a generation stream for its Ray hop. Order and text are kept, the first
event is not held back, consecutive deltas are merged, errors surface after the events before
them, and closing the batches closes the source (which is what aborts the engine request)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from serving.generate.streaming import coalesce, merge_deltas
from serving.messages import GenerationEvent


def delta(text="", reasoning=""):
    return GenerationEvent("delta", text=text, reasoning=reasoning)


ACCEPTED = GenerationEvent("accepted", prompt_tokens=3)
FINAL = GenerationEvent("final", completion_tokens=3, finish_reason="stop")


def test_merge_keeps_order_and_joins_consecutive_deltas():
    merged = merge_deltas([ACCEPTED, delta(reasoning="a"), delta(reasoning="b"),
                           delta(text="c"), delta(text="d"), FINAL])
    assert merged == (ACCEPTED, delta(reasoning="ab", text="cd"), FINAL)
    # reasoning after content stays apart (it never happens; if it did, order would show)
    assert merge_deltas([delta(text="x"), delta(reasoning="y")]) == (delta(text="x"),
                                                                      delta(reasoning="y"))


def test_first_event_goes_at_once_then_the_rest_merged():
    async def scenario():
        gate = asyncio.Event()

        async def source():
            yield ACCEPTED
            await gate.wait()
            for ch in "abc":
                yield delta(text=ch)
            yield FINAL

        batches = coalesce(source(), interval_s=0.01)
        first = await batches.__anext__()  # the source is blocked: nothing else is ready
        gate.set()
        rest = [b async for b in batches]
        return first, rest

    first, rest = asyncio.run(scenario())
    assert first == (ACCEPTED,)
    assert [e for batch in rest for e in batch] == [delta(text="abc"), FINAL]


def test_zero_interval_sends_every_event_alone():
    async def source():
        for event in (ACCEPTED, delta(text="a"), delta(text="b"), FINAL):
            yield event

    async def scenario():
        return [b async for b in coalesce(source(), interval_s=0)]

    assert asyncio.run(scenario()) == [(ACCEPTED,), (delta(text="a"),), (delta(text="b"),),
                                       (FINAL,)]


def test_a_source_error_comes_after_the_events_before_it():
    async def source():
        yield ACCEPTED
        await asyncio.sleep(0)
        yield delta(text="a")
        raise RuntimeError("engine died")

    async def scenario():
        got = []
        with pytest.raises(RuntimeError, match="engine died"):
            async for batch in coalesce(source(), interval_s=0.001):
                got.extend(batch)
        return got

    assert asyncio.run(scenario()) == [ACCEPTED, delta(text="a")]


def test_closing_the_batches_closes_the_source():
    closed = asyncio.Event()

    async def source():
        try:
            yield ACCEPTED
            while True:
                await asyncio.sleep(0.001)
                yield delta(text="x")
        finally:
            closed.set()

    async def scenario():
        async with aclosing(coalesce(source(), interval_s=0.005)) as batches:
            await batches.__anext__()
            await batches.__anext__()
        await asyncio.wait_for(closed.wait(), timeout=5)
        return closed.is_set()

    assert asyncio.run(scenario())


def test_deltas_of_different_choices_are_not_merged():
    from serving.generate.streaming import merge_deltas

    a0, b1, c1 = (GenerationEvent("delta", text="a"), GenerationEvent("delta", text="b", index=1),
                  GenerationEvent("delta", text="c", index=1))
    merged = merge_deltas([a0, b1, c1])
    assert [(e.index, e.text) for e in merged] == [(0, "a"), (1, "bc")]
