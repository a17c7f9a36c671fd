"""Versioned schema of the request log: an explicit version table and numbered migrations, applied
under a lock so that replicas starting at the same moment never race.

Several API replicas and the drift job share one database (PostgreSQL when scaled out); each one
calls `ensure_schema` at start. Without the lock, four processes released together failed 3 runs
out of 3 on PostgreSQL 15 (`duplicate key value violates unique constraint
"pg_type_typname_nsp_index"`: two CREATE TABLEs of one name). PostgreSQL takes a
transaction-scoped advisory lock and runs the DDL in the same transaction (its DDL is
transactional); SQLite takes its write lock with BEGIN IMMEDIATE. A database stamped by a newer
paperops is refused with the URL and what to do, never written to: its tables may mean something
this code does not know.

Versions: 1 = requests, predictions, feedback, generations, drift_reports (logs made before
versioning have these and no version table: they are stamped 1 and upgraded). 2 = log_batches,
one row per committed write batch, so a batch retried after a lost connection is never written
twice (the writer checks its key before the retry).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from paperops.requestlog.schema import (
    RequestLogError,
    _make_sqlite_dir,
    _safe_url,
    drift_reports_table,
    feedback_table,
    generations_table,
    log_batches_table,
    metadata,
    predictions_table,
    requests_table,
    schema_version_table,
)

# an arbitrary constant: the advisory lock every paperops process takes for schema changes
_PG_LOCK_KEY = 0x7061_7065_726F_7073 & 0x7FFF_FFFF_FFFF_FFFF


def _v1(conn: Connection) -> None:
    tables = [requests_table, predictions_table, feedback_table, generations_table]
    metadata.create_all(conn, tables=[*tables, drift_reports_table], checkfirst=True)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[log_batches_table], checkfirst=True)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(1, _v1), (2, _v2)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def stored_version(conn: Connection) -> int:
    """The database's schema version: 0 for an empty one, 1 for a log made before versioning."""
    inspector = sa.inspect(conn)
    if inspector.has_table(schema_version_table.name):
        row = conn.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar()
        if row is not None:
            return int(row)
    return 1 if inspector.has_table(requests_table.name) else 0


def check_version(conn: Connection, url: str) -> int:
    """The stored version, or RequestLogError when a newer paperops wrote it."""
    version = stored_version(conn)
    if version > SCHEMA_VERSION:
        raise RequestLogError(
            f"the request log at {_safe_url(url)} has schema version {version}, but this paperops "
            f"knows versions up to {SCHEMA_VERSION}: upgrade paperops on this machine (every "
            "replica and the drift job must run a version that knows the schema), or point "
            "serve.request_log.url at another database"
        )
    return version


def _migrate(conn: Connection, url: str) -> int:
    version = check_version(conn, url)
    for number, step in MIGRATIONS:
        if number > version:
            step(conn)
            metadata.create_all(conn, tables=[schema_version_table], checkfirst=True)
            conn.execute(schema_version_table.insert().values(version=number, ts=time.time()))
    return max(version, SCHEMA_VERSION)


def ensure_schema(engine: Engine, url: str) -> int:
    """Bring the database to SCHEMA_VERSION (idempotent, safe when several processes start at
    once); the version it is at. RequestLogError for a newer schema; SQLAlchemy errors (an
    unreachable server, wrong credentials) propagate for the caller to report."""
    _make_sqlite_dir(engine)
    if engine.dialect.name == "sqlite":
        # pysqlite would BEGIN only before DML; run the transaction by hand so DDL is inside it
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                version = _migrate(conn, url)
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
            return version
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        return _migrate(conn, url)
