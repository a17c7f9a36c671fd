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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from paperops.dburl import safe_url as _safe_url
from paperops.dburl import server_engine_kwargs

log = logging.getLogger(__name__)


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


# One row per committed write batch (schema version 2): a batch retried after a lost connection
# checks its key first, so a commit whose acknowledgement was lost is not written twice.
log_batches_table = sa.Table(
    "log_batches",
    metadata,
    sa.Column("batch_key", sa.String(64), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
)


# The schema version, one row per applied migration (paperops.requestlog.migrations).
schema_version_table = sa.Table(
    "paperops_schema",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
)


class RequestLogError(RuntimeError):
    """The log's database cannot be used as asked (unreachable, refused credentials, a schema
    from a newer paperops); the message names the URL with its password masked."""


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


def _short(error: BaseException) -> str:
    """An error without SQLAlchemy's SQL + parameters dump (which would log users' text)."""
    orig = getattr(error, "orig", None)
    inner = orig if isinstance(orig, BaseException) else error
    return f"{type(inner).__name__}: {inner}"


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
        kwargs = server_engine_kwargs(parsed)  # pre-ping; bounded connect, keepalives
        engine = sa.create_engine(parsed, **kwargs)
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
