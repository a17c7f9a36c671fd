"""Continuous batching for text generation: one worker thread decodes every active request.

A decode step of a small GPT-2 on a CPU costs about the same for 1 row as for 8, so concurrent
requests share each step instead of queueing behind each other. The worker owns the decoder
backend (torch or ONNX Runtime: neither is called from two threads) and loops:

1. take waiting requests (up to `max_batch_size` rows in all) and prefill them together, left
   padded; each samples its first token from its own seeded `Sampler`;
2. merge their caches into the running batch: every row's real tokens sit at the right end of
   the cache, so the shorter cache is left-padded with zeros (attention_mask 0) and position ids
   stay per row: a row's logits do not depend on its neighbours (up to float rounding);
3. run one decode step for all rows, sample one token per row, hand the tokens to their
   requests, and drop finished rows (eos, max_new_tokens, the context length, the time budget,
   or a cancel: a client that went away stops being decoded at the next step), trimming cache
   columns no remaining row uses.

Tokens reach the asyncio side through `loop.call_soon_threadsafe` (one call per step and event
loop, not per token), so the event loop never waits for the model. The queue is bounded
(`QueueFull` -> 503 + Retry-After) and `close()` finishes every accepted request first.

Over 500 lines on purpose: `GenerationEngine` is one loop whose invariants (who owns the cache,
which rows are live, when a request's future resolves) span prefill, merge, step and trim;
split across modules they would be harder to check, not easier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from paperops.inference.decoding import DecoderBackend, Past, Sampler, SamplingParams, left_pad
from paperops.serve.batching import QueueFull

log = logging.getLogger(__name__)

FINISH_REASONS = ("eos", "length", "context", "time_budget", "cancelled", "error")


class EngineClosed(RuntimeError):
    """The engine is shutting down (or was never started) and accepts no new requests."""


@dataclass(frozen=True)
class GenResult:
    """How one request ended. Times are seconds from submission."""

    token_ids: list[int]
    finish_reason: str
    seed: int
    prompt_tokens: int
    ttft_s: float | None
    total_s: float
    error: str | None = None

    @property
    def generated(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.total_s if self.total_s > 0 else 0.0


Event = tuple[str, Any]  # ("token", id) | ("done", GenResult)
FinishHook = Callable[["GenRequest", GenResult], None]
Pending = dict[Any, list[tuple[Any, Event]]]  # event loop -> (queue, event) to deliver


class GenRequest:
    """One submitted generation: its events (tokens, then one "done") and a `cancel()`.

    Events go to an asyncio.Queue when submitted with a loop, else to a list that `wait()`
    reads (tests, benchmarks, a CLI)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop | None,
        on_finish: FinishHook | None,
        context: Any = None,
    ) -> None:
        self.id = next(self._ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sampler = Sampler(params)
        self.seed = self.sampler.seed
        self.submitted = time.perf_counter()
        self.deadline = deadline
        self.loop = loop
        self.on_finish = on_finish
        self.context = context  # whatever the caller needs in on_finish (route, request id)
        self.queue: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self.tokens: list[int] = []
        self.first_token_at: float | None = None
        self.result: GenResult | None = None
        self._cancelled = False
        self._done = threading.Event()

    def cancel(self) -> None:
        """Stop at the next decode step (finish_reason "cancelled"); safe from any thread."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait(self, timeout: float | None = None) -> GenResult:
        """Block until done (for callers without an event loop)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"generation {self.id} not done after {timeout} s")
        if self.result is None:  # pragma: no cover - _done is set after result
            raise RuntimeError("generation done without a result")
        return self.result

    async def events(self) -> Any:
        """Async iterator over ("token", id) ... ("done", GenResult)."""
        if self.queue is None:
            raise RuntimeError("submitted without an event loop: use wait()")
        while True:
            kind, value = await self.queue.get()
            yield kind, value
            if kind == "done":
                return

    async def result_async(self) -> GenResult:
        async for kind, value in self.events():
            if kind == "done":
                return value  # type: ignore[no-any-return]
        raise RuntimeError("generation ended without a result")  # pragma: no cover


@dataclass
class _Row:
    req: GenRequest
    length: int  # tokens in the cache for this row
    last: int  # the sampled token not yet fed
    limit: int  # max tokens this row may generate
    limit_reason: str  # "length" or "context" when `limit` is reached


@dataclass
class EngineStats:
    steps: int = 0
    prefills: int = 0
    tokens: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    rejected: int = 0
    largest_batch: int = 0


class GenerationEngine:
    """Continuous batching over one `DecoderBackend`, in one worker thread."""

    def __init__(
        self,
        backend: DecoderBackend,
        *,
        max_batch_size: int = 8,
        queue_size: int = 64,
        time_budget_s: float | None = 30.0,
        retry_after_s: int = 1,
        on_step: Callable[[int, int, float], None] | None = None,
        on_finish: FinishHook | None = None,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1:
            raise ValueError(
                f"max_batch_size and queue_size must be >= 1; got {max_batch_size}, {queue_size}"
            )
        self.backend = backend
        self.max_batch_size = int(max_batch_size)
        self.queue_size = int(queue_size)
        self.time_budget_s = time_budget_s
        self.retry_after_s = int(retry_after_s)
        self.on_step = on_step  # (batch size, tokens emitted, seconds)
        self.on_finish = on_finish
        self.on_reject = on_reject
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._waiting: deque[GenRequest] = deque()
        self._rows: list[_Row] = []
        self._past: Past | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> GenerationEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="paperops-generate", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    def close(self, timeout: float = 10.0) -> bool:
        """Accept nothing new, finish what was accepted (within `timeout`, then cancel the
        rest); True when the worker stopped in time."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            for req in list(self._waiting):
                self._finish(req, "cancelled")
            self._waiting.clear()
            return True
        thread.join(timeout)
        if thread.is_alive():
            with self._cond:
                for r in self._rows:
                    r.req.cancel()
                for req in self._waiting:
                    req.cancel()
            thread.join(5.0)
        return not thread.is_alive()

    # -- producers --

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._rows)

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        on_finish: FinishHook | None = None,
        context: Any = None,
    ) -> GenRequest:
        """Queue a request (never blocks). Raises ValueError for a prompt that does not fit
        the context, QueueFull or EngineClosed."""
        n = len(prompt_ids)
        ctx = self.backend.context_length
        if n == 0:
            raise ValueError("the prompt has no tokens")
        if n >= ctx:
            raise ValueError(f"the prompt has {n} tokens; the model's context is {ctx}")
        deadline = None
        if self.time_budget_s is not None:
            deadline = time.perf_counter() + float(self.time_budget_s)
        req = GenRequest(
            prompt_ids, params, deadline=deadline, loop=loop, on_finish=on_finish, context=context
        )
        with self._cond:
            if self._closing or self._thread is None:
                raise EngineClosed("the generation worker is not running (shutting down?)")
            if len(self._waiting) >= self.queue_size:
                self.stats.rejected += 1
                if self.on_reject is not None:
                    self.on_reject()
                raise QueueFull(
                    f"the generation queue is full ({len(self._waiting)} of {self.queue_size} "
                    "requests waiting)",
                    self.retry_after_s,
                )
            self._waiting.append(req)
            self._cond.notify()
        return req

    # -- the worker --

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._waiting and not self._rows and not self._closing:
                    self._cond.wait()
                if self._closing and not self._waiting and not self._rows:
                    return
                room = self.max_batch_size - len(self._rows)
                new = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            pending: Pending = {}
            try:
                if new:
                    self._prefill(new, pending)
                if self._rows:
                    self._step(pending)
            except Exception as e:  # a backend failure ends every row it touched, not the worker
                log.exception("generation step failed")
                for r in self._rows:
                    self._finish(r.req, "error", pending, error=f"{type(e).__name__}: {e}")
                for req in new:
                    if req.result is None:
                        self._finish(req, "error", pending, error=f"{type(e).__name__}: {e}")
                self._rows, self._past = [], None
            self._flush(pending)

    def _limit(self, req: GenRequest) -> tuple[int, str]:
        room = self.backend.context_length - len(req.prompt_ids)
        if req.params.max_new_tokens <= room:
            return req.params.max_new_tokens, "length"
        return room, "context"

    def _stop_reason(self, req: GenRequest, now: float) -> str | None:
        if req.cancelled:
            return "cancelled"
        if req.deadline is not None and now >= req.deadline:
            return "time_budget"
        return None

    def _prefill(self, new: list[GenRequest], pending: Pending) -> None:
        now = time.perf_counter()
        live = []
        for req in new:
            reason = self._stop_reason(req, now)
            if reason is not None:
                self._finish(req, reason, pending)
            else:
                live.append(req)
        if not live:
            return
        ids, mask, pos = left_pad([r.prompt_ids for r in live], self.backend.eos_token_id)
        t0 = time.perf_counter()
        logits, past = self.backend.forward(ids, mask, pos, None)
        self.stats.prefills += 1
        rows = []
        for req in live:
            limit, why = self._limit(req)
            rows.append(_Row(req, len(req.prompt_ids), -1, limit, why))
        before = self.stats.tokens
        keep = self._sample(rows, logits, pending)
        if self.on_step is not None:
            self.on_step(len(live), self.stats.tokens - before, time.perf_counter() - t0)
        if keep:
            width = max(rows[i].length for i in keep)
            self._merge([rows[i] for i in keep], _select(past, keep, width))

    def _step(self, pending: Pending) -> None:
        now = time.perf_counter()
        early = []
        for i, r in enumerate(self._rows):  # gone clients / spent budgets: no compute for them
            reason = self._stop_reason(r.req, now)
            if reason is not None:
                self._finish(r.req, reason, pending)
            else:
                early.append(i)
        if len(early) < len(self._rows):
            self._compact(early)
        rows = self._rows
        if not rows or self._past is None:
            return
        b, width = len(rows), self._past[0][0].shape[2]
        ids = torch.tensor([[r.last] for r in rows], dtype=torch.long)
        mask = torch.zeros((b, width + 1), dtype=torch.long)
        for i, r in enumerate(rows):
            mask[i, width - r.length :] = 1
        pos = torch.tensor([[r.length] for r in rows], dtype=torch.long)
        t0 = time.perf_counter()
        logits, past = self.backend.forward(ids, mask, pos, self._past)
        self._past = past
        for r in rows:
            r.length += 1
        self.stats.steps += 1
        self.stats.largest_batch = max(self.stats.largest_batch, b)
        before = self.stats.tokens
        keep = self._sample(rows, logits, pending)
        if self.on_step is not None:
            self.on_step(b, self.stats.tokens - before, time.perf_counter() - t0)
        if len(keep) < len(rows):
            self._compact(keep)

    def _sample(self, rows: list[_Row], logits: torch.Tensor, pending: Pending) -> list[int]:
        """One token per row; returns the indices of rows that go on."""
        keep = []
        now = time.perf_counter()
        for i, r in enumerate(rows):
            req = r.req
            try:
                token = req.sampler.next_token(logits[i])
            except Exception as e:  # this request's sampling settings, not its neighbours'
                log.exception("sampling failed for generation %d", req.id)
                self._finish(req, "error", pending, error=f"{type(e).__name__}: {e}")
                continue
            if token == self.backend.eos_token_id and not req.params.ignore_eos:
                self._finish(req, "eos", pending)
                continue
            if req.first_token_at is None:
                req.first_token_at = now
            req.tokens.append(token)
            self.stats.tokens += 1
            self._emit(req, ("token", token), pending)
            r.last = token
            if len(req.tokens) >= r.limit:
                self._finish(req, r.limit_reason, pending)
                continue
            reason = self._stop_reason(req, now)
            if reason is not None:
                self._finish(req, reason, pending)
                continue
            keep.append(i)
        return keep

    def _merge(self, rows: list[_Row], past: Past) -> None:
        if not self._rows or self._past is None:
            self._rows, self._past = rows, past
            return
        a, b = self._past[0][0].shape[2], past[0][0].shape[2]
        width = max(a, b)
        merged = []
        for (ka, va), (kb, vb) in zip(self._past, past, strict=True):
            merged.append(
                (
                    torch.cat([_left_pad_past(ka, width), _left_pad_past(kb, width)], dim=0),
                    torch.cat([_left_pad_past(va, width), _left_pad_past(vb, width)], dim=0),
                )
            )
        self._rows = self._rows + rows
        self._past = tuple(merged)

    def _compact(self, keep: list[int]) -> None:
        if not keep or self._past is None:
            self._rows, self._past = [], None
            return
        rows = [self._rows[i] for i in keep]
        width = max(r.length for r in rows)
        self._past = _select(self._past, keep, width)
        self._rows = rows

    # -- results --

    def _emit(self, req: GenRequest, event: Event, pending: Pending) -> None:
        if req.queue is not None:
            pending.setdefault(req.loop, []).append((req.queue, event))

    def _finish(
        self,
        req: GenRequest,
        reason: str,
        pending: Pending | None = None,
        *,
        error: str | None = None,
    ) -> None:
        now = time.perf_counter()
        ttft = None if req.first_token_at is None else req.first_token_at - req.submitted
        result = GenResult(
            token_ids=list(req.tokens),
            finish_reason=reason,
            seed=req.seed,
            prompt_tokens=len(req.prompt_ids),
            ttft_s=ttft,
            total_s=now - req.submitted,
            error=error,
        )
        req.result = result
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        for hook in (self.on_finish, req.on_finish):
            if hook is not None:
                try:
                    hook(req, result)
                except Exception:
                    log.exception("generation on_finish hook failed")
        if req.queue is not None:
            if pending is None:
                _deliver(req.loop, [(req.queue, ("done", result))])
            else:
                self._emit(req, ("done", result), pending)
        req._done.set()

    def _flush(self, pending: Pending) -> None:
        for loop, items in pending.items():
            _deliver(loop, items)


def _deliver(loop: Any, items: list[tuple[Any, Event]]) -> None:
    def put_all() -> None:
        for queue, event in items:
            queue.put_nowait(event)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
        loop.call_soon_threadsafe(put_all)


def _left_pad_past(t: torch.Tensor, width: int) -> torch.Tensor:
    short = width - t.shape[2]
    if short == 0:
        return t
    return torch.nn.functional.pad(t, (0, 0, short, 0))


def _select(past: Past, keep: list[int], width: int) -> Past:
    """Rows `keep` of a cache, its last `width` positions only (columns no row uses go)."""
    index = torch.tensor(keep, dtype=torch.long)
    total = past[0][0].shape[2]
    everything = len(keep) == past[0][0].shape[0]
    out = []
    for k, v in past:
        if not everything:
            k, v = k.index_select(0, index), v.index_select(0, index)
        if width < total:
            k, v = k[:, :, total - width :], v[:, :, total - width :]
        out.append((k, v))
    return tuple(out)
