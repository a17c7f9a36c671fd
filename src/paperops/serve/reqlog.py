"""The request/prediction log: every served request and every paper's answer, written to a
database by one background thread so that a response never waits for a disk.

It feeds drift detection (`paperops monitor`, which compares a window of logged papers with the
training data) and feedback accuracy (`POST /v1/feedback` stores the true label of a logged
paper). SQLite in WAL mode by default; any SQLAlchemy URL works (Postgres:
`postgresql+psycopg://user@host/db`), so only portable SQLAlchemy Core is used outside the SQLite
connection setup.

Guarantees, in order of importance:
1. `log()` / `feedback()` never block and never raise: a full queue drops the record and counts
   its rows (`dropped`, `on_drop`), which the API exports as a Prometheus counter.
2. A database error (read-only file, disk full, locked past the busy timeout) drops that batch's
   rows, is logged at most every `ERROR_LOG_INTERVAL_S`, and the writer keeps going: it recovers
   by itself once the database works again.
3. `close()` writes everything still queued before it returns (bounded by its timeout).
4. Durable answers (the API's default, `serve.request_log.durable`): a handler awaits
   `wait_written(seq)` before it answers, so a response is only sent once its rows are committed
   (or dropped and counted, or the bounded wait ran out). A kill -9 then loses no row of an
   answered request. Waiters make the writer skip its linger: requests that arrive while one
   transaction commits share the next one (group commit), so the cost is one commit, not a queue.

A "row" is one database row: a request record is 1 + len(papers) rows, a feedback record 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 30.0  # at most one error line per interval while the database is failing
RECENT_IDS = 100_000  # request ids remembered in memory for has_request()
DEFAULT_BUSY_TIMEOUT_MS = 5_000

metadata = sa.MetaData()

requests_table = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # not unique: a client may resend a request id; a duplicate must not fail a whole batch
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("n_papers", sa.Integer, nullable=False),
    sa.Index("ix_requests_ts", "ts"),
    sa.Index("ix_requests_request_id", "request_id"),
)

predictions_table = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("set_size", sa.Integer, nullable=False),
    sa.Column("prediction_set", sa.JSON, nullable=False),  # ["cs", ...]
    sa.Column("top", sa.JSON, nullable=False),  # [["cs", 0.91], ...]
    sa.Column("title", sa.Text, nullable=True),  # NULL when store_text is false
    sa.Column("abstract", sa.Text, nullable=True),
    sa.Column("text_chars", sa.Integer, nullable=False),  # kept even without text: length drift
    sa.Index("ix_predictions_ts", "ts"),
    sa.Index("ix_predictions_request_id_idx", "request_id", "idx"),
)

feedback_table = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Index("ix_feedback_request_id_idx", "request_id", "idx"),
)

generations_table = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("prompt", sa.Text, nullable=True),  # NULL when store_text is false
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("generated_tokens", sa.Integer, nullable=False),
    sa.Column("finish_reason", sa.String(40), nullable=False),
    sa.Column("ttft_ms", sa.Float, nullable=True),  # NULL when no token was generated
    sa.Column("total_ms", sa.Float, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Index("ix_generations_ts", "ts"),
    sa.Index("ix_generations_request_id", "request_id"),
)

# Written by `paperops monitor drift`, read by the API (gauges, /v1/monitoring/drift): the log's
# database is the one store every API replica and the drift job already share.
drift_reports_table = sa.Table(
    "drift_reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("drifted", sa.Boolean, nullable=False),
    sa.Column("report", sa.JSON, nullable=False),
    sa.Index("ix_drift_reports_ts", "ts"),
)


@dataclass(frozen=True)
class PaperLogRow:
    """One paper of a request and the answer it got."""

    index: int
    title: str
    abstract: str
    label: str
    confidence: float
    prediction_set: list[str]
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class RequestRecord:
    """One served request (any status) and its papers' answers (empty for errors)."""

    request_id: str
    ts: float
    route: str
    status: int
    latency_ms: float
    model_name: str
    model_version: str
    papers: list[PaperLogRow] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return 1 + len(self.papers)


@dataclass(frozen=True)
class FeedbackRecord:
    """The true label of paper `index` of request `request_id`, as a user reported it."""

    request_id: str
    index: int
    label: str
    ts: float

    @property
    def rows(self) -> int:
        return 1


@dataclass(frozen=True)
class GenerationRecord:
    """One answered generation (/v1/generate, streamed or not, or /infer), cancelled ones
    included (status 499: the client went away)."""

    request_id: str
    ts: float
    route: str
    model_version: str
    prompt: str
    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    ttft_ms: float | None
    total_ms: float
    seed: int
    status: int = 200

    @property
    def rows(self) -> int:
        return 1


Record = RequestRecord | FeedbackRecord | GenerationRecord


class _SchemaNotReady(Exception):
    """The tables could not be created (yet): the batch is dropped, creation retried."""


def _short(error: BaseException) -> str:
    """An error without SQLAlchemy's SQL + parameters dump (which would log users' text)."""
    orig = getattr(error, "orig", None)
    inner = orig if isinstance(orig, BaseException) else error
    return f"{type(inner).__name__}: {inner}"


def _safe_url(url: str) -> str:
    try:
        parsed = make_url(url)
        return url if parsed.password is None else parsed.render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


# --- engine --------------------------------------------------------------------------------


def _sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL (None for in-memory databases)."""
    db = url.database
    if not db or db == ":memory:":
        return None
    if db.startswith("file:"):  # sqlite:///file:/path/x.db?mode=ro&uri=true
        db = db[len("file:") :].split("?", 1)[0]
        if not db or db == ":memory:" or "mode=memory" in str(url):
            return None
    return Path(db)


def _make_sqlite_dir(engine: Engine) -> None:
    """SQLite creates the file but not its directory."""
    if engine.dialect.name == "sqlite":
        path = _sqlite_path(engine.url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for the log. SQLite gets WAL (readers never block the writer), synchronous=NORMAL
    (safe with WAL, far fewer fsyncs) and a busy timeout on every new connection."""
    try:
        parsed = make_url(url)
        engine = sa.create_engine(parsed)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as e:
        raise ValueError(
            f"serve.request_log.url {_safe_url(url)!r} is not a usable SQLAlchemy URL ({e}); e.g. "
            "sqlite:///data/requests/requests.db or postgresql+psycopg://user@host/db"
        ) from e
    except ImportError as e:
        raise ValueError(
            f"serve.request_log.url {_safe_url(url)!r} needs a database driver that is not "
            f"installed ({e}); install it (e.g. `pip install psycopg[binary]` for PostgreSQL)"
        ) from e
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            except Exception as e:  # e.g. a read-only file: reads still work
                log.debug("request log: SQLite pragmas not applied (%s)", e)
            finally:
                cur.close()

    return engine


# --- the writer ----------------------------------------------------------------------------


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
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"serve.request_log.queue_size must be >= 1; got {queue_size}")
        if batch_size < 1:
            raise ValueError(f"serve.request_log.batch_size must be >= 1; got {batch_size}")
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
        """Create the tables (idempotent) and start the writer thread. A database that cannot be
        written right now is logged, not raised: serving goes on and rows are dropped (counted)
        until it works; only a malformed URL or a missing driver raises (ValueError)."""
        if self._thread is not None:
            return self
        if self._closed:
            raise RuntimeError("this RequestLog was closed; create a new one")
        self._engine = make_engine(self.url, busy_timeout_ms=self._busy_timeout_ms)
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
            try:
                self._write(batch)
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

    def _ensure_schema(self) -> bool:
        if self._schema_ready:
            return True
        engine = self._live_engine()
        try:
            _make_sqlite_dir(engine)
            metadata.create_all(engine, checkfirst=True)
        except (OSError, sa.exc.SQLAlchemyError) as e:
            self._report(
                f"request log {self._where()} is not writable ({_short(e)}); serving "
                "continues and log rows are dropped (counted) until it is"
            )
            return False
        self._schema_ready = True
        return True

    def _write(self, batch: list[Record]) -> None:
        if not self._ensure_schema():
            raise _SchemaNotReady("database not writable")
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


# --- readers (monitoring, tests) -----------------------------------------------------------


@contextmanager
def _reader(url: str, table: sa.Table | None = None) -> Iterator[sa.Connection | None]:
    """A connection to an existing log, or None when it has no `table` (default: predictions)
    yet. A missing SQLite file is an error naming it (connecting would create an empty one)."""
    table = predictions_table if table is None else table
    engine = make_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            path = _sqlite_path(engine.url)
            if path is not None and not path.is_file():
                raise FileNotFoundError(
                    f"no request log at {path}: it is created by `paperops serve` "
                    "(serve.request_log.url)"
                )
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table.name):
                yield None
            else:
                yield conn
    finally:
        engine.dispose()


def read_predictions(
    url: str,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Logged paper predictions with `since <= ts < until`, oldest first; with `limit`, the
    most recent `limit` of them. Each row carries `feedback_label` (the latest feedback for that
    paper, or None)."""
    p, f = predictions_table, feedback_table
    with _reader(url) as conn:
        if conn is None:
            return []
        latest_fb = (
            sa.select(sa.func.max(f.c.id).label("fid"))
            .group_by(f.c.request_id, f.c.idx)
            .subquery("latest_fb")
        )
        fb = (
            sa.select(f.c.request_id, f.c.idx, f.c.label)
            .join(latest_fb, f.c.id == latest_fb.c.fid)
            .subquery("fb")
        )
        stmt = sa.select(p, fb.c.label.label("feedback_label")).outerjoin(
            fb, sa.and_(fb.c.request_id == p.c.request_id, fb.c.idx == p.c.idx)
        )
        if since is not None:
            stmt = stmt.where(p.c.ts >= since)
        if until is not None:
            stmt = stmt.where(p.c.ts < until)
        rows = _oldest_first(conn, stmt, p, limit)
    for r in rows:
        r["index"] = r.pop("idx")
        r["top"] = [(str(lab), float(prob)) for lab, prob in r["top"]]
    return rows


def count_requests(url: str) -> int:
    """How many requests the log holds (0 for a log without tables yet)."""
    with _reader(url) as conn:
        if conn is None:
            return 0
        return int(conn.execute(sa.select(sa.func.count()).select_from(requests_table)).scalar())


def read_generations(url: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Logged generations, oldest first (with `limit`, the most recent `limit`)."""
    g = generations_table
    with _reader(url, g) as conn:
        if conn is None:
            return []
        return _oldest_first(conn, sa.select(g), g, limit)


def _oldest_first(
    conn: sa.Connection, stmt: sa.Select, table: sa.Table, limit: int | None
) -> list[dict[str, Any]]:
    """Rows of `stmt` oldest first (with `limit`, the most recent `limit`), without `id`."""
    if limit is not None:
        stmt = stmt.order_by(table.c.ts.desc(), table.c.id.desc()).limit(int(limit))
    else:
        stmt = stmt.order_by(table.c.ts, table.c.id)
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    if limit is not None:
        rows.reverse()
    for r in rows:
        r.pop("id", None)
    return rows


def save_drift_report(url: str, report: dict[str, Any]) -> None:
    """Store a drift report where the API looks for the latest one."""
    engine = make_engine(url)
    try:
        _make_sqlite_dir(engine)
        metadata.create_all(engine, tables=[drift_reports_table], checkfirst=True)
        with engine.begin() as conn:
            conn.execute(
                drift_reports_table.insert().values(
                    ts=float(report["ts"]), drifted=bool(report["drifted"]), report=report
                )
            )
    finally:
        engine.dispose()


def latest_drift_report(url: str) -> dict[str, Any] | None:
    """The most recent stored drift report, or None when there is none (or no log yet)."""
    t = drift_reports_table
    try:
        with _reader(url, t) as conn:
            if conn is None:
                return None
            row = conn.execute(
                sa.select(t.c.report).order_by(t.c.ts.desc(), t.c.id.desc()).limit(1)
            ).first()
    except FileNotFoundError:
        return None
    return None if row is None else dict(row[0])


def _set_results(futs: list[asyncio.Future[bool]], ok: bool) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(ok)
