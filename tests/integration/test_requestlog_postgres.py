"""The request log on a live PostgreSQL (tests/pg.py): schema creation raced by several processes,
versioned migrations (an unversioned log is upgraded, a newer schema refused), a server restart in
the middle of writing loses no row and writes none twice, and bad credentials or an unreachable
server give clear, bounded errors that never show the password."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from paperops.requestlog.migrations import SCHEMA_VERSION, ensure_schema, stored_version
from paperops.requestlog.queries import count_requests, read_predictions
from paperops.requestlog.schema import (
    RequestLogError,
    make_engine,
    metadata,
    predictions_table,
    requests_table,
    schema_version_table,
)
from paperops.requestlog.writer import RequestLog
from tests.pg import PASSWORD, PgCluster, query
from tests.unit.requestlog.test_writer import request, wait_until

pytestmark = [pytest.mark.integration]


def _migrate_in_child(url: str, barrier: Any) -> int:
    engine = make_engine(url)
    barrier.wait(30)
    try:
        return ensure_schema(engine, url)
    finally:
        engine.dispose()


def test_replicas_creating_the_schema_at_once_all_succeed(pg_url: str) -> None:
    """Four processes released together, as replicas starting at once: the advisory lock
    serialises them, the migrations run once, every process sees the current version."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        versions = pool.starmap(_migrate_in_child, [(pg_url, barrier)] * 4, chunksize=1)
    assert versions == [SCHEMA_VERSION] * 4
    assert query(pg_url, "SELECT version FROM paperops_schema ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]


def test_an_unversioned_log_is_upgraded_and_keeps_its_rows(pg_url: str) -> None:
    engine = make_engine(pg_url)
    v1 = [t for t in metadata.sorted_tables if t.name not in ("log_batches", "paperops_schema")]
    metadata.create_all(engine, tables=v1)  # a log written before the schema had versions
    with engine.begin() as conn:
        conn.execute(
            requests_table.insert().values(
                request_id="old",
                ts=1.0,
                route="/v1/classify",
                status=200,
                latency_ms=1.0,
                model_name="m",
                model_version="1",
                n_papers=0,
            )
        )
        assert stored_version(conn) == 1
    engine.dispose()
    with RequestLog(pg_url) as rl:
        rl.log(request("new", n_papers=2))
    assert rl.written == 3
    assert query(pg_url, "SELECT request_id FROM requests ORDER BY id") == [("old",), ("new",)]
    assert query(pg_url, "SELECT max(version) FROM paperops_schema") == [(SCHEMA_VERSION,)]


def test_a_schema_from_a_newer_paperops_is_refused(pg_url: str) -> None:
    engine = make_engine(pg_url)
    ensure_schema(engine, pg_url)
    with engine.begin() as conn:
        conn.execute(schema_version_table.insert().values(version=SCHEMA_VERSION + 1, ts=0.0))
    engine.dispose()
    for attempt in (lambda: RequestLog(pg_url).start(), lambda: read_predictions(pg_url)):
        with pytest.raises(RequestLogError) as err:
            attempt()
        msg = str(err.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in msg and "upgrade paperops" in msg
        assert PASSWORD not in msg and "***" in msg


@pytest.mark.parametrize("fault", ["password", "port"])
def test_bad_credentials_or_no_server_are_clear_bounded_errors(
    pg_cluster: PgCluster, fault: str
) -> None:
    db = pg_cluster.new_database()
    if fault == "password":
        url = pg_cluster.url(db, password="wrong-secret")
        expected = "password authentication failed"
    else:
        from paperops.serve.launcher import free_port

        url = pg_cluster.url(db, port=free_port())  # nothing listens there
        expected = "connection"
    started = time.monotonic()
    with pytest.raises(RequestLogError) as err:
        read_predictions(url)
    msg = str(err.value)
    assert expected in msg.lower() and "check the host, port, user and password" in msg
    assert "wrong-secret" not in msg and PASSWORD not in msg and "***" in msg

    rl = RequestLog(url, retry_s=0.5).start()  # serving must start: the log is not fatal
    for i in range(5):
        rl.log(request(f"r{i}"))
    rl.close(timeout=10)
    assert (rl.written, rl.dropped) == (0, 10)
    assert rl.last_error is not None and "wrong-secret" not in rl.last_error
    assert time.monotonic() - started < 60  # bounded: nothing waited for a server forever


def test_a_server_restart_mid_write_loses_no_row_and_writes_none_twice(
    pg_own_cluster: PgCluster,
) -> None:
    url = pg_own_cluster.url(pg_own_cluster.new_database())
    rl = RequestLog(url, linger_ms=5, batch_size=16).start()
    n, stop = 400, threading.Event()

    def produce() -> None:
        for i in range(n):
            assert rl.log(request(f"q{i}", n_papers=2))
            time.sleep(0.005)
        stop.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: rl.written > 60, "rows written before the restart")
        pg_own_cluster.stop("fast")  # aborts the open transaction and drops every connection
        time.sleep(1.0)  # records keep arriving while the server is down
        written_during_outage = rl.written
        pg_own_cluster.start()
        assert stop.wait(60)
    finally:
        producer.join(60)
        rl.close(timeout=30)
    assert rl.dropped == 0 and rl.written == n * 3
    assert written_during_outage < n * 3  # the outage really held rows back
    assert rl.last_error is None
    assert count_requests(url) == n
    dup = "SELECT request_id FROM requests GROUP BY request_id HAVING count(*) > 1"
    assert query(url, dup) == []
    assert query(url, "SELECT count(*) FROM predictions") == [(2 * n,)]


def test_a_retried_batch_whose_commit_went_through_is_not_written_twice(pg_url: str) -> None:
    """The lost-acknowledgement case, made deterministic: the same batch and key written again
    as a retry (what the writer does after an error it cannot tell from a failed commit)."""
    rl = RequestLog(pg_url).start()
    try:
        batch = [request("once", n_papers=3)]
        rl._write(batch, "test-key-1")
        rl._write(batch, "test-key-1", retry=True)
    finally:
        rl.close()
    assert count_requests(pg_url) == 1
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(predictions_table)).scalar()
    engine.dispose()
    assert n == 3
