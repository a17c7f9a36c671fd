"""`RequestLog`: the one background thread that writes the request log.

A response never waits for the disk unless `durable` asks it to: records queue in memory and
are written in batches (group commit); with `durable`, `wait_written(seq)` lets a handler answer
only after its rows are committed (kill -9 then loses no answered request, measured in
docs/reliability.md). A full queue or a failing database drops rows and counts them.

A database server that goes away (a restart, a failover, a dropped connection) is not a failing
database: the writer holds the batch and retries it with backoff for up to `retry_s`, and new
records queue behind it (bounded by `queue_size`), so a restart loses no row. Each batch carries a
key stored with it (table log_batches), and a retry first checks for it: a commit whose
acknowledgement was lost with the connection is not written twice. Local SQLite errors (a
read-only file, a full disk, a lock held past the busy timeout) drop the batch at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from paperops.requestlog.migrations import ensure_schema
from paperops.requestlog.queries import _set_results
from paperops.requestlog.schema import (
    DEFAULT_BUSY_TIMEOUT_MS,
    FeedbackRecord,
    GenerationRecord,
    Record,
    RequestRecord,
    _safe_url,
    _short,
    feedback_table,
    generations_table,
    log_batches_table,
    make_engine,
    predictions_table,
    requests_table,
)

log = logging.getLogger(__name__)


ERROR_LOG_INTERVAL_S = 30.0  # at most one error line per interval while the database is failing


RECENT_IDS = 100_000  # request ids remembered in memory for has_request()

BATCH_KEYS_KEEP_S = 3600.0  # log_batches rows older than this are pruned (retries are shorter)
PRUNE_EVERY = 1000  # batches between two prunes


class _SchemaNotReady(Exception):
    """The tables could not be created (yet): the batch fails, creation is retried."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"database not writable: {_short(cause)}")
        self.cause = cause


class RequestLog:
    """A bounded queue of records and one background thread that writes them in batches."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 10000,
        batch_size: int = 256,
        store_text: bool = True,
        on_drop: Callable[[int], None] | None = None,
        on_write: Callable[[int], None] | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        linger_ms: float = 50.0,
        retry_s: float = 60.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"serve.request_log.queue_size must be >= 1; got {queue_size}")
        if batch_size < 1:
            raise ValueError(f"serve.request_log.batch_size must be >= 1; got {batch_size}")
        if not 0 <= retry_s <= BATCH_KEYS_KEEP_S:
            raise ValueError(
                f"serve.request_log.retry_s must be between 0 and {BATCH_KEYS_KEEP_S:.0f}; "
                f"got {retry_s}"
            )
        self.retry_s = float(retry_s)
        self._instance = uuid.uuid4().hex[:16]  # batch keys: <instance>-<n>, unique per process
        self._batches = 0
        self._give_up_at = float("inf")  # set by close(): retries end before its timeout
        self.url = url
        self.queue_size = int(queue_size)
        self.batch_size = int(batch_size)
        self.store_text = bool(store_text)
        self._on_drop = on_drop
        self._on_write = on_write
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._items: deque[Record] = deque()
        self.linger_s = float(linger_ms) / 1000
        self._idle = False  # the writer waits for a first record
        self._pending_rows = 0  # rows queued + rows in the batch being written
        self._queued_rows = 0  # rows queued only
        self._stopping = False
        self._closed = False
        self._dropped = 0
        self._written = 0
        self._schema_ready = False
        self._last_error: str | None = None
        self._last_error_logged = 0.0
        self._errors_since_logged = 0
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        # Records are numbered in queue order and written in that order, so "every record up
        # to seq N is resolved" is one integer; waiters are (seq, loop, future) of async handlers.
        self._seq = 0
        self._resolved = 0
        self._taken = 0
        self._failed: deque[tuple[int, int]] = deque(maxlen=64)  # seq ranges of dropped batches
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []

    # -- lifecycle --

    def start(self) -> RequestLog:
        """Create or migrate the tables (idempotent) and start the writer thread. A database
        that cannot be reached right now is logged, not raised: serving goes on and rows are
        retried or dropped (counted) until it works. A malformed URL or a missing driver raises
        ValueError, a schema from a newer paperops RequestLogError."""
        if self._thread is not None:
            return self
        if self._closed:
            raise RuntimeError("this RequestLog was closed; create a new one")
        self._engine = make_engine(self.url, busy_timeout_ms=self._busy_timeout_ms)
        with contextlib.suppress(_SchemaNotReady):  # reported; the writer tries again
            self._ensure_schema()
        self._thread = threading.Thread(target=self._run, name="paperops-reqlog", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer (idempotent). Records that could not
        be written within `timeout` seconds are counted as dropped."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._give_up_at = time.monotonic() + max(0.0, timeout - 1.0)
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error(
                    "request log: writer still busy after %.1f s at shutdown; %d queued rows "
                    "are lost",
                    timeout,
                    self.queue_depth,
                )
        with self._cond:  # never started, or the writer gave up: what is left is lost
            left = list(self._items)
            self._items.clear()
            rows = sum(r.rows for r in left)
            self._queued_rows -= rows
            self._pending_rows -= rows
        if rows:
            self._drop(rows)
        self._resolve(self._seq, ok=False)  # nobody waits for a writer that is gone
        if self._engine is not None and (thread is None or not thread.is_alive()):
            self._engine.dispose()

    def __enter__(self) -> RequestLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producers (any thread, never block) --

    def put(self, record: Record) -> int | None:
        """Queue any record; its sequence number (for `wait_written`), None when it was
        dropped (queue full or log closed)."""
        if isinstance(record, RequestRecord):
            self._remember(record.request_id)
        return self._put(record)

    def log(self, record: RequestRecord) -> bool:
        """Queue a request record; False when it was dropped (queue full or log closed)."""
        return self.put(record) is not None

    def generation(self, record: GenerationRecord) -> bool:
        """Queue a generation record; False when it was dropped (queue full or log closed)."""
        return self.put(record) is not None

    def feedback(self, fb: FeedbackRecord) -> bool:
        """Queue a feedback record; False when it was dropped (queue full or log closed)."""
        return self.put(fb) is not None

    async def wait_written(self, seq: int | None, timeout: float) -> bool | None:
        """Wait until record `seq` is resolved: True once committed, False when it was dropped
        (or never queued: seq None), None when `timeout` seconds passed first (it stays queued)."""
        if seq is None:
            return False
        loop = asyncio.get_running_loop()
        with self._cond:
            if seq <= self._resolved:
                return not any(lo <= seq <= hi for lo, hi in self._failed)
            fut: asyncio.Future[bool] = loop.create_future()
            self._waiters.append((seq, loop, fut))
            self._cond.notify()  # a lingering writer writes now
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        return fut.result() if done else None

    def has_request(self, request_id: str) -> bool:
        """Whether this request id was served: recent ids of this process first, then the DB
        (a previous process, or another replica sharing the database)."""
        with self._cond:
            if request_id in self._recent:
                return True
        engine = self._engine
        if engine is None:
            return False
        try:
            with engine.connect() as conn:
                stmt = (
                    sa.select(requests_table.c.id)
                    .where(requests_table.c.request_id == request_id)
                    .limit(1)
                )
                return conn.execute(stmt).first() is not None
        except sa.exc.SQLAlchemyError as e:
            log.warning("request log: cannot look up request %s (%s)", request_id, e)
            return False

    # -- state --

    @property
    def dropped(self) -> int:
        """Rows dropped so far (full queue, database errors, closed log)."""
        return self._dropped

    @property
    def written(self) -> int:
        """Rows committed to the database so far."""
        return self._written

    @property
    def queue_depth(self) -> int:
        """Rows waiting for the writer (not counting the batch it is writing)."""
        return self._queued_rows

    @property
    def last_error(self) -> str | None:
        """The latest database error, None once a batch has been written after it."""
        return self._last_error

    # -- internals --

    def _remember(self, request_id: str) -> None:
        with self._cond:
            if request_id in self._recent:
                return
            self._recent.add(request_id)
            self._recent_order.append(request_id)
            if len(self._recent_order) > RECENT_IDS:
                self._recent.discard(self._recent_order.popleft())

    def _put(self, record: Record) -> int | None:
        n = record.rows
        with self._cond:
            if not self._closed and self._pending_rows + n <= self.queue_size:
                self._items.append(record)
                self._pending_rows += n
                self._queued_rows += n
                self._seq += 1
                # Wake the writer only when it idles or a batch is full: waking it per record
                # makes it fight the event loop for the GIL (halved throughput when measured).
                if self._idle or self._queued_rows >= self.batch_size:
                    self._cond.notify()
                return self._seq
        self._drop(n)
        return None

    def _resolve(self, through: int, *, ok: bool) -> None:
        """Records up to `through` are written (ok) or dropped: wake their waiters, one
        thread-safe call per event loop."""
        with self._cond:
            self._resolved = max(self._resolved, through)
            ready = [w for w in self._waiters if w[0] <= through]
            if not ready:
                return
            self._waiters = [w for w in self._waiters if w[0] > through]
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
        for _, loop, fut in ready:
            by_loop.setdefault(loop, []).append(fut)
        for loop, futs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_set_results, futs, ok)

    def _drop(self, n: int) -> None:
        with self._cond:
            self._dropped += n
        if self._on_drop is not None:
            try:
                self._on_drop(n)
            except Exception:
                log.exception("request log: on_drop callback failed")

    def _take(self) -> list[Record] | None:
        """The next batch (up to batch_size rows, at least one record); None when stopping and
        nothing is left."""
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._idle = True
                self._cond.wait()
                self._idle = False
            # Linger a little for a fuller batch: one transaction per ~50 ms instead of one per
            # request. close() sets _stopping and notifies, which ends the wait at once.
            deadline = time.monotonic() + self.linger_s
            while self._queued_rows < self.batch_size and not self._stopping and not self._waiters:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[Record] = []
            rows = 0
            while self._items and (not batch or rows + self._items[0].rows <= self.batch_size):
                rec = self._items.popleft()
                batch.append(rec)
                rows += rec.rows
            self._queued_rows -= rows
            self._taken = self._seq - len(self._items)  # the seq of this batch's last record
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            rows = sum(r.rows for r in batch)
            last = self._taken
            self._batches += 1
            try:
                self._write_retrying(batch, f"{self._instance}-{self._batches}", rows)
            except Exception as e:  # any failure: drop this batch, keep the thread alive
                self._fail(rows, e)
                self._failed.append((last - len(batch) + 1, last))
                self._resolve(last, ok=False)
            else:
                self._resolve(last, ok=True)
                with self._cond:
                    self._written += rows
                self._last_error = None
                if self._on_write is not None:
                    try:
                        self._on_write(rows)
                    except Exception:
                        log.exception("request log: on_write callback failed")
            finally:
                with self._cond:
                    self._pending_rows -= rows

    def _live_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("RequestLog.start() was not called")
        return self._engine

    def _ensure_schema(self) -> None:
        """Tables at the current version; _SchemaNotReady when the database cannot be reached
        or written, RequestLogError for a newer schema."""
        if self._schema_ready:
            return
        try:
            ensure_schema(self._live_engine(), self.url)
        except (OSError, sa.exc.SQLAlchemyError) as e:
            server = self._live_engine().dialect.name != "sqlite"
            todo = (
                "check the host, port, user and password in serve.request_log.url and that the "
                "database server is running; rows are retried for serve.request_log.retry_s, "
                "then dropped (counted)"
                if server
                else "log rows are dropped (counted) until it is"
            )
            self._report(
                f"request log {self._where()} is not writable ({_short(e)}); serving continues: "
                f"{todo}"
            )
            raise _SchemaNotReady(e) from e
        self._schema_ready = True

    def _transient(self, error: BaseException) -> bool:
        """A lost or refused server connection (worth retrying), not a local SQLite failure."""
        if isinstance(error, _SchemaNotReady):
            error = error.cause
        if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
            return True
        if self._live_engine().dialect.name == "sqlite":
            return False
        return isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError)

    def _write_retrying(self, batch: list[Record], key: str, rows: int) -> None:
        """Write the batch; on a transient error hold it and retry with backoff until it is
        written, `retry_s` has passed or close() needs the thread back."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                self._write(batch, key, retry=attempt > 0)
            except Exception as e:
                now = time.monotonic()
                if (
                    not self._transient(e)
                    or now - started >= self.retry_s
                    or now >= self._give_up_at
                ):
                    raise
                attempt += 1
                self._report(
                    f"request log {self._where()}: database unavailable ({_short(e)}); holding "
                    f"{rows} rows and retrying for up to {self.retry_s:.0f} s"
                )
                with self._cond:  # close() wakes this wait to give up in time
                    self._cond.wait(min(0.05 * 2**attempt, 1.0, max(0.0, self._give_up_at - now)))
                continue
            if attempt:
                log.warning(
                    "request log %s: database back; %d held rows written after %d retries (%.1f s)",
                    self._where(),
                    rows,
                    attempt,
                    time.monotonic() - started,
                )
            return

    def _write(self, batch: list[Record], key: str, *, retry: bool = False) -> None:
        self._ensure_schema()
        engine = self._live_engine()
        req_rows: list[dict[str, Any]] = []
        pred_rows: list[dict[str, Any]] = []
        fb_rows: list[dict[str, Any]] = []
        gen_rows: list[dict[str, Any]] = []
        for rec in batch:
            if isinstance(rec, GenerationRecord):
                gen_rows.append(
                    {
                        "request_id": rec.request_id,
                        "ts": float(rec.ts),
                        "route": rec.route,
                        "model_version": rec.model_version,
                        "prompt": rec.prompt if self.store_text else None,
                        "text": rec.text if self.store_text else None,
                        "prompt_tokens": int(rec.prompt_tokens),
                        "generated_tokens": int(rec.generated_tokens),
                        "finish_reason": rec.finish_reason,
                        "ttft_ms": None if rec.ttft_ms is None else float(rec.ttft_ms),
                        "total_ms": float(rec.total_ms),
                        "seed": int(rec.seed),
                        "status": int(rec.status),
                    }
                )
                continue
            if isinstance(rec, FeedbackRecord):
                fb_rows.append(
                    {
                        "request_id": rec.request_id,
                        "idx": int(rec.index),
                        "label": rec.label,
                        "ts": float(rec.ts),
                    }
                )
                continue
            req_rows.append(
                {
                    "request_id": rec.request_id,
                    "ts": float(rec.ts),
                    "route": rec.route,
                    "status": int(rec.status),
                    "latency_ms": float(rec.latency_ms),
                    "model_name": rec.model_name,
                    "model_version": rec.model_version,
                    "n_papers": len(rec.papers),
                }
            )
            for p in rec.papers:
                pred_rows.append(
                    {
                        "request_id": rec.request_id,
                        "idx": int(p.index),
                        "ts": float(rec.ts),
                        "model_version": rec.model_version,
                        "label": p.label,
                        "confidence": float(p.confidence),
                        "set_size": len(p.prediction_set),
                        "prediction_set": list(p.prediction_set),
                        "top": [[lab, float(prob)] for lab, prob in p.top],
                        "title": p.title if self.store_text else None,
                        "abstract": p.abstract if self.store_text else None,
                        "text_chars": len(p.title) + len(p.abstract),
                    }
                )
        with engine.begin() as conn:
            if retry:  # the failed attempt may have committed before its connection was lost
                done = sa.select(log_batches_table.c.batch_key).where(
                    log_batches_table.c.batch_key == key
                )
                if conn.execute(done).first() is not None:
                    return
            n_rows = len(req_rows) + len(pred_rows) + len(fb_rows) + len(gen_rows)
            conn.execute(
                log_batches_table.insert().values(batch_key=key, ts=time.time(), rows=n_rows)
            )
            if self._batches % PRUNE_EVERY == 0:
                old = time.time() - BATCH_KEYS_KEEP_S
                conn.execute(log_batches_table.delete().where(log_batches_table.c.ts < old))
            if req_rows:
                conn.execute(requests_table.insert(), req_rows)
            if pred_rows:
                conn.execute(predictions_table.insert(), pred_rows)
            if fb_rows:
                conn.execute(feedback_table.insert(), fb_rows)
            if gen_rows:
                conn.execute(generations_table.insert(), gen_rows)

    def _fail(self, rows: int, error: BaseException) -> None:
        self._drop(rows)
        self._report(f"request log {self._where()}: dropped {rows} rows ({_short(error)})")

    def _where(self) -> str:
        return _safe_url(self.url)

    def _report(self, message: str) -> None:
        """Log a database error, at most once per ERROR_LOG_INTERVAL_S (a failing disk under
        load would otherwise write one line per batch)."""
        self._last_error = message
        now = time.monotonic()
        if self._last_error_logged and now - self._last_error_logged < ERROR_LOG_INTERVAL_S:
            self._errors_since_logged += 1
            return
        suppressed = self._errors_since_logged
        self._errors_since_logged = 0
        self._last_error_logged = now
        extra = f" ({suppressed} similar errors not shown)" if suppressed else ""
        log.error("%s%s; total dropped rows: %d", message, extra, self._dropped)
