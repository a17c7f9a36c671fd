"""MicroBatcher with a deterministic runtime whose calls can be slowed or held at a gate.

Nothing here asserts a duration: where a behaviour is about not waiting (a lone request, a
withdrawn announcement), max_wait_ms is set far beyond the test's own timeout, so waiting would
fail the test instead of slowing it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from paperops.serve.batching import BatcherClosed, BatchResult, MicroBatcher, QueueFull
from tests.integration.serve_helpers import GatedRuntime, tiny_predictor

FOREVER_MS = 60_000.0  # a wait the tests would notice (their timeouts are 20 s)
TIMEOUT = 20.0
T = TypeVar("T")


def texts(*numbers: int) -> list[str]:
    return [f"paper {n}" for n in numbers]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def test_a_lone_request_is_answered_without_waiting_for_a_batch() -> None:
    rt = GatedRuntime()
    b = MicroBatcher(tiny_predictor(rt), max_batch_size=32, max_wait_ms=FOREVER_MS).start()

    async def go() -> None:
        for i in range(3):  # one client, one request after another
            res = await b.submit(texts(i))
            assert res.predictions[0].label == rt.label_of(f"paper {i}")

    try:
        run(go())
        assert rt.calls == [1, 1, 1]
        assert rt.threads == {"paperops-batcher"}  # never on the event loop's thread
    finally:
        assert b.close(TIMEOUT)


def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    rt = GatedRuntime(delay=0.05)
    b = MicroBatcher(tiny_predictor(rt), max_batch_size=8, max_wait_ms=2).start()

    async def one(i: int) -> tuple[int, list[str]]:
        res = await b.submit(texts(i, i + 1, i + 2), top_k=2)
        return i, [p.label for p in res.predictions]

    async def go() -> list[tuple[int, list[str]]]:
        return await asyncio.gather(*(one(i) for i in range(0, 60, 3)))

    try:
        answers = run(go())
    finally:
        assert b.close(TIMEOUT)
    for i, labels in answers:
        assert labels == [rt.label_of(t) for t in texts(i, i + 1, i + 2)]
    assert sum(rt.calls) == 60
    assert len(rt.calls) < 20 and max(rt.calls) == 8  # batched, never above max_batch_size
    assert b.stats.largest_batch == 8 and b.stats.papers == 60


def test_a_request_larger_than_a_batch_is_split_and_answered_in_order() -> None:
    rt = GatedRuntime()
    b = MicroBatcher(tiny_predictor(rt), max_batch_size=8, max_wait_ms=0).start()
    try:
        res = run(b.submit(texts(*range(20)), top_k=1))
    finally:
        assert b.close(TIMEOUT)
    assert [p.label for p in res.predictions] == [rt.label_of(t) for t in texts(*range(20))]
    assert rt.calls == [8, 8, 4]


def test_each_request_gets_its_own_top_k_inside_a_shared_batch() -> None:
    rt = GatedRuntime(gated=True)
    b = MicroBatcher(tiny_predictor(rt), max_batch_size=8, max_wait_ms=0).start()

    async def go() -> tuple[BatchResult, BatchResult, BatchResult]:
        first = asyncio.ensure_future(b.submit(texts(0), top_k=1))
        await wait_until(rt.entered.is_set)  # the worker holds the first batch at the gate
        a = asyncio.ensure_future(b.submit(texts(1), top_k=1))
        c = asyncio.ensure_future(b.submit(texts(2), top_k=4))
        await wait_until(lambda: b.queue_depth == 2)
        rt.gate.set()
        return await first, await a, await c

    try:
        _, a, c = run(go())
    finally:
        rt.gate.set()
        assert b.close(TIMEOUT)
    assert rt.calls == [1, 2]
    assert len(a.predictions[0].top) == 1 and len(c.predictions[0].top) == 4


def test_a_full_queue_refuses_new_work_and_accepted_work_completes() -> None:
    rt = GatedRuntime(gated=True)
    rejected: list[int] = []
    b = MicroBatcher(
        tiny_predictor(rt),
        max_batch_size=2,
        max_wait_ms=0,
        queue_size=4,
        retry_after_s=3,
        on_reject=lambda: rejected.append(1),
    ).start()

    async def go() -> list[BatchResult]:
        running = asyncio.ensure_future(b.submit(texts(0, 1)))
        await wait_until(rt.entered.is_set)  # in the worker, not in the queue any more
        queued = [asyncio.ensure_future(b.submit(texts(2, 3))) for _ in range(2)]
        await wait_until(lambda: b.queue_depth == 4)
        with pytest.raises(QueueFull, match=r"4 of 4 papers waiting.*retry in 3 s") as e:
            await b.submit(texts(9))
        assert e.value.retry_after_s == 3
        rt.gate.set()
        return await asyncio.gather(running, *queued)

    try:
        done = run(go())
    finally:
        rt.gate.set()
        assert b.close(TIMEOUT)
    assert len(done) == 3 and rejected == [1] and b.stats.rejected == 1
    assert rt.calls == [2, 2, 2]


def test_close_answers_everything_accepted_then_refuses() -> None:
    rt = GatedRuntime(gated=True)
    b = MicroBatcher(tiny_predictor(rt), max_batch_size=2, max_wait_ms=0).start()

    async def go() -> list[BatchResult]:
        futures = [asyncio.ensure_future(b.submit(texts(i))) for i in range(5)]
        # the worker holds the first batch (1 or 2 papers) at the gate; the rest is queued
        await wait_until(lambda: rt.entered.is_set() and b.queue_depth in (3, 4))
        closer = threading.Thread(target=b.close, args=(TIMEOUT,))
        closer.start()  # blocks until the queue is drained
        await wait_until(lambda: not b.running)
        with pytest.raises(BatcherClosed):
            await b.submit(texts(7))
        rt.gate.set()
        results = await asyncio.gather(*futures)
        await asyncio.get_running_loop().run_in_executor(None, closer.join, TIMEOUT)
        return results

    try:
        results = run(go())
    finally:
        rt.gate.set()
    assert [r.predictions[0].label for r in results] == [rt.label_of(t) for t in texts(*range(5))]
    assert sum(rt.calls) == 5


def test_swap_keeps_in_flight_work_on_the_old_model() -> None:
    old_rt, new_rt = GatedRuntime(gated=True), GatedRuntime()
    old, new = tiny_predictor(old_rt, version="1"), tiny_predictor(new_rt, version="2")
    b = MicroBatcher(old, max_batch_size=4, max_wait_ms=0).start()

    async def go() -> tuple[Any, Any]:
        # a request split over three batches: its first part is at the old model's gate
        split = asyncio.ensure_future(b.submit(texts(*range(10))))
        await wait_until(old_rt.entered.is_set)
        assert b.swap(new) is old
        later = asyncio.ensure_future(b.submit(texts(42)))
        old_rt.gate.set()
        return await split, await later

    try:
        split, later = run(go())
    finally:
        old_rt.gate.set()
        assert b.close(TIMEOUT)
    assert split.info.version == "1" and later.info.version == "2"
    assert old_rt.calls == [4, 4, 2]  # the whole split request stayed on the old model
    assert new_rt.calls == [1]
    assert b.predictor is new


def test_a_failing_batch_fails_its_requests_only() -> None:
    rt = GatedRuntime(gated=True)
    b = MicroBatcher(tiny_predictor(rt), max_batch_size=1, max_wait_ms=0).start()

    async def go() -> tuple[Any, Any]:
        bad = asyncio.ensure_future(b.submit(["paper boom"]))
        good = asyncio.ensure_future(b.submit(texts(3)))
        await wait_until(lambda: b.queue_depth == 1)
        rt.gate.set()
        return await asyncio.gather(bad, good, return_exceptions=True)

    try:
        bad, good = run(go())
        assert b.running  # the worker survived
    finally:
        rt.gate.set()
        assert b.close(TIMEOUT)
    assert isinstance(bad, ValueError) and "on purpose" in str(bad)
    assert good.predictions[0].label == rt.label_of("paper 3")


def test_announced_requests_are_waited_for_and_a_withdrawal_ends_the_wait() -> None:
    rt = GatedRuntime()
    b = MicroBatcher(tiny_predictor(rt), max_batch_size=8, max_wait_ms=FOREVER_MS).start()

    async def go() -> None:
        # two requests announced (bodies arriving); the first submits, the worker waits
        b.announce()
        b.announce()
        first = asyncio.ensure_future(b.submit(texts(1), announced=True))
        await asyncio.sleep(0.2)
        assert not first.done() and rt.calls == []
        await b.submit(texts(2), announced=True)  # the second arrives: one batch of two
        await first
        assert rt.calls == [2]
        # an announced request that never submits (say, bad input) must not hold a batch back
        b.announce()
        b.announce()
        pending = asyncio.ensure_future(b.submit(texts(3), announced=True))
        await asyncio.sleep(0.2)
        assert not pending.done()
        b.withdraw()
        await pending
        assert rt.calls == [2, 1]

    try:
        run(go())
    finally:
        assert b.close(TIMEOUT)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(tiny_predictor(GatedRuntime()), max_batch_size=0)
