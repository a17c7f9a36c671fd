"""Readers of the request log: the drift job's window of predictions (oldest first), generations,
request counts, and the stored drift reports the API serves at /v1/monitoring/drift.

Opened read-only where the database allows it, so a drift job never blocks the writer. A server
that cannot be reached, refused credentials or a schema from a newer paperops raise
RequestLogError naming the URL (password masked) and what to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from paperops.requestlog.migrations import check_version, ensure_schema
from paperops.requestlog.schema import (
    RequestLogError,
    _safe_url,
    _short,
    _sqlite_path,
    drift_reports_table,
    feedback_table,
    generations_table,
    make_engine,
    predictions_table,
    requests_table,
)


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
        try:
            conn = engine.connect()
        except sa.exc.OperationalError as e:
            raise _unavailable(url, e) from None
        with conn:
            check_version(conn, url)
            if not sa.inspect(conn).has_table(table.name):
                yield None
            else:
                yield conn
    finally:
        engine.dispose()


def _unavailable(url: str, error: BaseException) -> RequestLogError:
    return RequestLogError(
        f"cannot open the request log at {_safe_url(url)} ({_short(error)}): check the host, "
        "port, user and password of the URL (monitor.request_log / serve.request_log.url) and "
        "that the database server is running"
    )


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
        try:
            ensure_schema(engine, url)
        except sa.exc.OperationalError as e:
            raise _unavailable(url, e) from None
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
