"""Dynamic micro-batching: many concurrent requests, one inference call.

An encoder costs about the same for 1 text as for 8 on a CPU with idle cores, and a sparse tfidf
product pays its Python overhead once per call, so concurrent requests are merged into batches
of up to `max_batch_size` papers that one worker thread runs through `Predictor.predict_texts`
(inference never runs on the event loop, and one thread owns the runtime, as the `Runtime`
protocol requires).

When to dispatch: at once when nothing else is known to be coming — a lone client must not pay
`max_wait_ms` per request — and otherwise wait up to `max_wait_ms` for a fuller batch, but only
while more is on its way: requests *announced* by the HTTP layer whose bodies are still being
read, or an event loop that is still busy submitting (a `_tick` callback sees whether the last
event-loop iterations brought new submissions; two quiet iterations mean it has caught up, which
costs a lone client microseconds). While the worker computes, new requests queue up and the next
batch takes them all; that is where most of the batching under load comes from.

The queue is bounded in papers (`QueueFull` -> 503 + Retry-After), a request larger than a batch
is split across batches, the predictor can be swapped at any time (a batch in flight finishes on
the old one; a split request stays on the model that answered its first part, so one response
never mixes two models), and `close()` answers everything already accepted before it returns.

Follow-up work on a request's own papers (explanations: `run_task`) runs in the same worker
thread, so the runtime still has one caller, but in a lane of its own: at most one task between
two batches, so other requests' batches wait for one task at a time, never for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from paperops.inference.predictor import ModelInfo, PaperPrediction, Predictor

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """A queue (papers for the classifier's batcher, requests for the generation engine) cannot
    take this request now: the API answers 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(f"{message}: retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class BatcherClosed(RuntimeError):
    """The batcher is shutting down (or was never started) and accepts no new work."""


class BatchResult(NamedTuple):
    """One request's answers (in input order) and the model that produced them."""

    predictions: list[PaperPrediction]
    info: ModelInfo
    predictor: Predictor | None = None  # the one that answered (None for an empty request)


@dataclass(eq=False)
class _Job:
    texts: Sequence[str]
    top_k: int
    future: asyncio.Future[BatchResult]
    loop: asyncio.AbstractEventLoop
    results: list[PaperPrediction | None]
    remaining: int
    cross_lists: bool = False  # also the head's suggestions (Predictor.predict_texts)
    predictor: Predictor | None = None  # pinned when its first chunk is dispatched
    error: BaseException | None = None


@dataclass(eq=False)
class _Task:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(eq=False)
class _Chunk:
    job: _Job
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class BatcherStats:
    batches: int = 0
    papers: int = 0
    largest_batch: int = 0
    rejected: int = 0
    tasks: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))


QUIET_TICKS = 2  # event-loop iterations without a new submission = "nothing more is coming"
BatchHook = Callable[[int, float, str], None]  # (papers, seconds, runtime kind)


class MicroBatcher:
    """Run `predictor.predict_texts` for many concurrent `submit` calls in one worker thread."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        queue_size: int = 512,
        retry_after_s: int = 1,
        on_batch: BatchHook | None = None,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError(
                "max_batch_size and queue_size must be >= 1 and max_wait_ms >= 0; got "
                f"{max_batch_size}, {queue_size}, {max_wait_ms}"
            )
        self._predictor = predictor
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.queue_size = int(queue_size)
        self.retry_after_s = int(retry_after_s)
        self.on_batch = on_batch
        self.on_reject = on_reject
        self.stats = BatcherStats()
        self._cond = threading.Condition()
        self._queue: deque[_Chunk] = deque()
        self._queued = 0  # papers in _queue
        self._tasks: deque[_Task] = deque()
        self._task_turn = False  # the next pick is a task (one task between two batches)
        self._announced = 0  # requests being received that will submit soon
        # "is the event loop still busy taking in requests?": see _tick
        self._submits = 0
        self._caught_up = 0
        self._tick_mark = 0
        self._quiet_ticks = 0
        # what the worker waits for ("work", "more", None = computing): wake it only when that
        # changes, not on every submission (each wake-up costs a futex call and a GIL hand-off)
        self._waiting_for: str | None = None
        self._tick_loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- state -----------------------------------------------------------------------------

    @property
    def predictor(self) -> Predictor:
        return self._predictor

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    @property
    def queue_depth(self) -> int:
        """Papers waiting for a batch (not counting the batch being computed)."""
        return self._queued

    def start(self) -> MicroBatcher:
        if self._thread is not None:
            raise RuntimeError("this batcher was already started")
        self._thread = threading.Thread(target=self._run, name="paperops-batcher", daemon=True)
        self._thread.start()
        return self

    def swap(self, predictor: Predictor) -> Predictor:
        """Serve the next batches with `predictor`; returns the old one. Work already in a batch
        (and the remaining parts of a request split across batches) finishes on the old one."""
        with self._cond:
            old, self._predictor = self._predictor, predictor
        return old

    # --- arrivals: lets the worker know whether waiting for a fuller batch can pay off -------

    def announce(self) -> None:
        """A request that will `submit(..., announced=True)` soon has started arriving."""
        with self._cond:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request ended without submitting (bad input, an error)."""
        with self._cond:
            self._announced = max(0, self._announced - 1)
            if self._waiting_for == "more" and not self._more_coming():
                self._cond.notify()

    # --- submitting ------------------------------------------------------------------------

    async def submit(
        self,
        texts: Sequence[str],
        top_k: int = 3,
        *,
        announced: bool = False,
        cross_lists: bool = False,
    ) -> BatchResult:
        """Answers for `texts` (model texts, see `paperops.data.text.model_text`), in order;
        `cross_lists`: with the cross-list head's suggestions (only this request's papers in a
        shared batch pay for them).

        Raises QueueFull when accepting them would exceed `queue_size` papers, BatcherClosed
        after `close()`, and whatever the runtime raised when its batch failed.
        """
        loop = asyncio.get_running_loop()
        n = len(texts)
        with self._cond:
            if announced:
                self._announced = max(0, self._announced - 1)
            if self._closing or self._thread is None:
                raise BatcherClosed("the inference worker is not running (shutting down?)")
            if n == 0:
                return BatchResult([], self._predictor.info)
            if self._queued + n > self.queue_size:
                self.stats.rejected += 1
                queued = self._queued
                if self.on_reject is not None:
                    self.on_reject()
                raise QueueFull(
                    f"the inference queue is full ({queued} of {self.queue_size} papers waiting; "
                    f"this request has {n})",
                    self.retry_after_s,
                )
            job = _Job(texts, int(top_k), loop.create_future(), loop, [None] * n, n, cross_lists)
            for start in range(0, n, self.max_batch_size):
                self._queue.append(_Chunk(job, start, min(n, start + self.max_batch_size)))
            self._queued += n
            self._submits += 1
            if self._tick_loop is not loop:
                self._tick_loop, self._tick_mark, self._quiet_ticks = loop, self._submits, 0
                loop.call_soon(self._tick, loop)
            if self._waiting_for == "work" or (
                self._waiting_for == "more" and self._queued >= self.max_batch_size
            ):
                self._cond.notify()
        return await job.future

    async def run_task(self, fn: Callable[[], Any]) -> Any:
        """`fn()` in the worker thread, between batches (one task per gap): follow-up work that
        calls the runtime, such as explaining a request's papers. Raises QueueFull when
        `queue_size` tasks are already waiting, BatcherClosed after `close()`, and what `fn`
        raised."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closing or self._thread is None:
                raise BatcherClosed("the inference worker is not running (shutting down?)")
            if len(self._tasks) >= self.queue_size:
                self.stats.rejected += 1
                if self.on_reject is not None:
                    self.on_reject()
                raise QueueFull(
                    f"the inference queue is full ({len(self._tasks)} follow-up tasks waiting)",
                    self.retry_after_s,
                )
            task = _Task(fn, loop.create_future(), loop)
            self._tasks.append(task)
            if self._waiting_for == "work":
                self._cond.notify()
        return await task.future

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs once per event-loop iteration while requests are being submitted. The loop has
        caught up (the worker need not wait for more) after QUIET_TICKS whole iterations, each
        with an I/O poll, in which nothing new was submitted; a lone client pays a few of these
        microsecond iterations, never max_wait_ms."""
        with self._cond:
            if self._submits > self._tick_mark:
                self._tick_mark, self._quiet_ticks = self._submits, 0
            else:
                self._quiet_ticks += 1
            if self._quiet_ticks < QUIET_TICKS and not self._closing:
                loop.call_soon(self._tick, loop)
                return
            self._tick_loop = None
            self._caught_up = self._submits
            if self._waiting_for == "more" and not self._more_coming():
                self._cond.notify()

    # --- the worker ------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting work, finish everything accepted, stop the worker. True if it ended
        within `timeout` (None waits for as long as the queued work takes)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                work = self._next_work()
            if work is None:
                return
            if isinstance(work, _Task):
                self._run_task(work)
                continue
            batch, predictor = work
            try:
                self._compute(batch, predictor)
            except Exception as e:  # a bug here must not kill the only worker
                log.exception("the batcher failed to deliver a batch")
                self._fail({c.job for c in batch}, e)

    def _next_work(self) -> _Task | tuple[list[_Chunk], Predictor] | None:
        """Called with the lock held: wait for work; a task when it is the tasks' turn (or no
        batch is waiting), else maybe wait a little longer for a fuller batch, then take up to
        max_batch_size papers for one predictor, oldest first. None: closed and drained."""
        while True:
            while not self._queue and not self._tasks:
                if self._closing:
                    return None
                self._waiting_for = "work"
                self._cond.wait()
                self._waiting_for = None
            if self._tasks and (self._task_turn or not self._queue):
                self._task_turn = False
                return self._tasks.popleft()
            self._wait_for_more()
            batch, predictor = self._take()
            if batch and predictor is not None:
                self._task_turn = True  # a task waiting now or later goes before the next batch
                return batch, predictor
            # everything at the front had been answered already (a failed or cancelled request)

    def _more_coming(self) -> bool:
        return self._announced > 0 or self._caught_up < self._submits

    def _wait_for_more(self) -> None:
        """Up to max_wait_ms while the batch is not full and more requests are on their way
        (announced bodies being read, or an event loop still busy submitting); returns at once
        for a lone client."""
        if self.max_wait_s <= 0 or self._queued >= self.max_batch_size or not self._more_coming():
            return
        deadline = time.monotonic() + self.max_wait_s
        try:
            while self._queued < self.max_batch_size and self._more_coming() and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._waiting_for = "more"
                self._cond.wait(left)
        finally:
            self._waiting_for = None

    def _take(self) -> tuple[list[_Chunk], Predictor | None]:
        predictor: Predictor | None = None
        batch: list[_Chunk] = []
        room = self.max_batch_size
        while self._queue and room > 0:
            chunk = self._queue[0]
            job = chunk.job
            if job.error is not None or job.future.cancelled():  # answered already: drop
                self._queue.popleft()
                self._queued -= chunk.size
                continue
            wanted = job.predictor or self._predictor
            if predictor is None:
                predictor = wanted
            elif wanted is not predictor:
                break  # the rest of a split request stays on its own model: next batch
            if chunk.size > room:  # split: take what fits, leave the rest at the front
                taken = _Chunk(job, chunk.start, chunk.start + room)
                chunk.start += room
            else:
                taken = self._queue.popleft()
            job.predictor = predictor
            self._queued -= taken.size
            room -= taken.size
            batch.append(taken)
        return batch, predictor

    def _compute(self, batch: list[_Chunk], predictor: Predictor) -> None:
        texts = [t for c in batch for t in c.job.texts[c.start : c.end]]
        top_k = max(c.job.top_k for c in batch)
        wanted: bool | list[bool] = False
        # a model without a head (swapped in by a reload after the request's check) answers
        # without cross-lists instead of failing everyone's batch; the route tells that client
        if predictor.cross_lists is not None and any(c.job.cross_lists for c in batch):
            wanted = [c.job.cross_lists for c in batch for _ in range(c.size)]
        start = time.perf_counter()
        try:
            predictions = predictor.predict_texts(texts, top_k, wanted)
            if len(predictions) != len(texts):
                raise RuntimeError(
                    f"the predictor returned {len(predictions)} answers for {len(texts)} texts"
                )
        except Exception as e:  # the runtime failed: every request in this batch gets the error
            log.exception("inference failed for a batch of %d papers", len(texts))
            self._fail({c.job for c in batch}, e)
            return
        seconds = time.perf_counter() - start
        self.stats.batches += 1
        self.stats.papers += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        self.stats.sizes.append(len(texts))
        if self.on_batch is not None:
            try:
                self.on_batch(len(texts), seconds, predictor.runtime.kind)
            except Exception:  # metrics must never fail a batch
                log.exception("on_batch hook failed")
        done: list[_Job] = []
        offset = 0
        for c in batch:
            job = c.job
            for i in range(c.start, c.end):
                p = predictions[offset]
                offset += 1
                job.results[i] = (
                    p if len(p.top) <= job.top_k else replace(p, top=p.top[: job.top_k])
                )
            job.remaining -= c.size
            if job.remaining == 0:
                done.append(job)
        self._deliver(done)

    def _run_task(self, task: _Task) -> None:
        if task.future.cancelled():  # the client went away
            return
        try:
            value, error = task.fn(), None
        except Exception as e:  # the caller gets it; the worker lives on
            value, error = None, e
        self.stats.tasks += 1
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            task.loop.call_soon_threadsafe(_settle, task.future, value, error)

    def _deliver(self, jobs: list[_Job]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, group in by_loop.items():
            # a closed loop (RuntimeError): nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, group)

    def _fail(self, jobs: set[_Job], error: BaseException) -> None:
        for job in jobs:
            job.error = error
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_reject, group)


def _resolve(jobs: list[_Job]) -> None:
    for job in jobs:
        if not job.future.done() and job.predictor is not None:
            job.future.set_result(BatchResult(job.results, job.predictor.info, job.predictor))  # type: ignore[arg-type]


def _reject(jobs: list[_Job]) -> None:
    for job in jobs:
        if not job.future.done() and job.error is not None:
            job.future.set_exception(job.error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
