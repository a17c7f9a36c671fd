"""The request log on a real SQLite file: what is logged is read back, a full queue or a broken
database drops rows (counted) instead of blocking, and close() flushes."""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from paperops.requestlog.queries import count_requests, read_predictions
from paperops.requestlog.schema import FeedbackRecord, PaperLogRow, RequestRecord, make_engine
from paperops.requestlog.writer import RequestLog


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition (bounded): a state the test waits for, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def paper(i: int, label: str = "cs", title: str = "Graph Neural Networks") -> PaperLogRow:
    return PaperLogRow(
        index=i,
        title=title,
        abstract="We propose a model for graphs.",
        label=label,
        confidence=0.8,
        prediction_set=[label, "math"],
        top=[(label, 0.8), ("math", 0.15), ("hep-th", 0.05)],
    )


def request(rid: str, n_papers: int = 1, ts: float | None = None) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        ts=time.time() if ts is None else ts,
        route="/v1/classify",
        status=200,
        latency_ms=4.2,
        model_name="paperops-classifier",
        model_version="3",
        papers=[paper(i) for i in range(n_papers)],
    )


@pytest.fixture
def db(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "logs" / "requests.db"  # parent does not exist yet: start() creates it
    return path, f"sqlite:///{path}"


@pytest.fixture
def started(db: tuple[Path, str]) -> Iterator[RequestLog]:
    rl = RequestLog(db[1]).start()
    yield rl
    rl.close()


def test_rows_are_written_and_read_back(db: tuple[Path, str]) -> None:
    path, url = db
    writes: list[int] = []
    rl = RequestLog(url, on_write=writes.append).start()
    assert rl.log(request("r1", n_papers=2, ts=100.0))
    assert rl.log(request("r2", n_papers=1, ts=101.0))
    assert rl.log(
        RequestRecord("r3", 102.0, "/v1/classify", 422, 0.5, "paperops-classifier", "3", [])
    )
    rl.close()  # no waiting before close: close() is the flush
    assert (rl.written, rl.dropped, rl.queue_depth) == (3 + 3, 0, 0)
    assert sum(writes) == 6
    assert path.is_file()
    assert count_requests(url) == 3
    rows = read_predictions(url)
    assert [(r["request_id"], r["index"]) for r in rows] == [("r1", 0), ("r1", 1), ("r2", 0)]
    r = rows[0]
    assert r["label"] == "cs" and r["confidence"] == pytest.approx(0.8)
    assert r["prediction_set"] == ["cs", "math"] and r["set_size"] == 2
    assert r["top"] == [("cs", 0.8), ("math", 0.15), ("hep-th", 0.05)]
    assert r["title"] == "Graph Neural Networks"
    assert r["abstract"] == "We propose a model for graphs."
    assert r["text_chars"] == len(r["title"]) + len(r["abstract"])
    assert r["model_version"] == "3" and r["ts"] == 100.0
    assert r["feedback_label"] is None


def test_sqlite_is_in_wal_mode(started: RequestLog, db: tuple[Path, str]) -> None:
    started.log(request("r1"))
    started.close()
    with sqlite3.connect(db[0]) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with make_engine(db[1]).connect() as conn:  # every engine connection gets the pragmas
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_start_is_idempotent_and_store_text_false_keeps_no_text(db: tuple[Path, str]) -> None:
    RequestLog(db[1]).start().close()  # tables exist already: start() again must work
    rl = RequestLog(db[1], store_text=False)
    assert rl.start() is rl.start()
    rl.log(request("r1"))
    rl.close()
    rl.close()  # idempotent
    (row,) = read_predictions(db[1])
    assert row["title"] is None and row["abstract"] is None
    assert row["text_chars"] == len("Graph Neural Networks") + len("We propose a model for graphs.")


def test_concurrent_producers_lose_nothing(db: tuple[Path, str]) -> None:
    rl = RequestLog(db[1], queue_size=10_000, batch_size=64).start()
    n_threads, per_thread = 4, 200
    results: list[bool] = []
    lock = threading.Lock()

    def produce(t: int) -> None:
        ok = [rl.log(request(f"t{t}-{i}", n_papers=2)) for i in range(per_thread)]
        with lock:
            results.extend(ok)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    rl.close()
    total = n_threads * per_thread
    assert len(results) == total and all(results)
    assert (rl.written, rl.dropped) == (total * 3, 0)
    assert count_requests(db[1]) == total
    rows = read_predictions(db[1])
    assert len(rows) == total * 2
    assert {r["request_id"] for r in rows} == {
        f"t{t}-{i}" for t in range(n_threads) for i in range(per_thread)
    }


def test_full_queue_drops_and_counts_without_blocking(started: RequestLog, db: tuple[Path, str]):
    """Another connection holds SQLite's write lock, so the writer is stuck in its first batch;
    log() must keep answering at once and drop what does not fit, counting the rows."""
    started.close()
    drops: list[int] = []
    rl = RequestLog(db[1], queue_size=10, busy_timeout_ms=60_000, on_drop=drops.append).start()
    locker = sqlite3.connect(db[0], isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        assert rl.log(request("first"))  # 2 rows: the writer takes it and waits for the lock
        wait_until(lambda: rl.queue_depth == 0, "the writer to take the first batch")
        accepted = [rl.log(request(f"r{i}")) for i in range(50)]
        # 10 rows of room, 2 held by the batch in flight: 4 more 2-row records fit
        assert accepted[:4] == [True] * 4 and not any(accepted[4:])
        assert rl.dropped == 46 * 2 and sum(drops) == 46 * 2 and rl.queue_depth == 8
        assert rl.written == 0
    finally:
        locker.execute("COMMIT")
        locker.close()
    rl.close()
    assert rl.written == 5 * 2
    assert count_requests(db[1]) == 5


def test_read_only_database_drops_rows_and_never_raises(db: tuple[Path, str]) -> None:
    path, url = db
    RequestLog(url).start().close()  # the file and tables exist
    drops: list[int] = []
    ro = RequestLog(f"sqlite:///file:{path}?mode=ro&uri=true", on_drop=drops.append).start()
    for i in range(20):
        ro.log(request(f"r{i}"))  # returns at once; the writer fails in the background
    ro.feedback(FeedbackRecord("r1", 0, "math", time.time()))
    ro.close()
    assert ro.written == 0
    assert ro.dropped == sum(drops) == 20 * 2 + 1
    assert ro.last_error is not None and "readonly" in ro.last_error
    assert count_requests(url) == 0


def test_unwritable_directory_drops_rows_and_never_raises(tmp_path: Path) -> None:
    (tmp_path / "not_a_dir").write_text("a file where the log directory should be")
    rl = RequestLog(f"sqlite:///{tmp_path}/not_a_dir/requests.db").start()  # does not raise
    for i in range(10):
        rl.log(request(f"r{i}", n_papers=3))
    rl.close()
    assert (rl.written, rl.dropped) == (0, 10 * 4)
    assert rl.last_error is not None and "not writable" in rl.last_error


def test_writer_recovers_when_the_database_works_again(db: tuple[Path, str]) -> None:
    path, url = db
    RequestLog(url).start().close()
    rl = RequestLog(url, busy_timeout_ms=20).start()
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        rl.log(request("lost"))
        wait_until(lambda: rl.dropped == 2, "the locked batch to be dropped")
        assert rl.last_error is not None and "locked" in rl.last_error
    finally:
        locker.execute("COMMIT")
        locker.close()
    rl.log(request("kept"))
    rl.close()
    assert (rl.written, rl.dropped) == (2, 2)
    assert rl.last_error is None
    assert [r["request_id"] for r in read_predictions(url)] == ["kept"]


def test_log_after_close_is_dropped(started: RequestLog) -> None:
    started.close()
    assert started.log(request("late", n_papers=2)) is False
    assert started.feedback(FeedbackRecord("late", 0, "cs", time.time())) is False
    assert started.dropped == 4


def test_feedback_joins_to_predictions(started: RequestLog, db: tuple[Path, str]) -> None:
    started.log(request("a", n_papers=2, ts=10.0))
    started.log(request("b", n_papers=1, ts=11.0))
    started.feedback(FeedbackRecord("a", 1, "hep-th", 12.0))
    started.feedback(FeedbackRecord("b", 0, "math", 12.0))
    started.feedback(FeedbackRecord("b", 0, "astro-ph", 13.0))  # a correction: the latest wins
    started.feedback(FeedbackRecord("unknown", 0, "cs", 13.0))  # joins nothing, breaks nothing
    started.close()
    got = {(r["request_id"], r["index"]): r["feedback_label"] for r in read_predictions(db[1])}
    assert got == {("a", 0): None, ("a", 1): "hep-th", ("b", 0): "astro-ph"}


def test_has_request_remembers_and_reads_the_database(db: tuple[Path, str]) -> None:
    rl = RequestLog(db[1]).start()
    rl.log(request("served"))
    assert rl.has_request("served")  # from memory, before the writer has written it
    assert not rl.has_request("never")
    rl.close()
    again = RequestLog(db[1]).start()  # a new process: only the database knows
    try:
        assert again.has_request("served")
        assert not again.has_request("never")
    finally:
        again.close()


def test_read_predictions_window_and_limit(started: RequestLog, db: tuple[Path, str]) -> None:
    for i in range(6):
        started.log(request(f"r{i}", ts=100.0 + i))
    started.close()
    ids = lambda rows: [r["request_id"] for r in rows]  # noqa: E731
    assert ids(read_predictions(db[1], since=102.0)) == ["r2", "r3", "r4", "r5"]
    assert ids(read_predictions(db[1], since=101.0, until=104.0)) == ["r1", "r2", "r3"]
    assert ids(read_predictions(db[1], limit=2)) == ["r4", "r5"]  # the latest, oldest first


def test_readers_on_missing_or_empty_logs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no request log at"):
        read_predictions(f"sqlite:///{tmp_path}/missing.db")
    sqlite3.connect(tmp_path / "empty.db").close()
    assert read_predictions(f"sqlite:///{tmp_path}/empty.db") == []
    assert count_requests(f"sqlite:///{tmp_path}/empty.db") == 0


def test_bad_url_or_missing_driver_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a usable SQLAlchemy URL"):
        RequestLog("not a url").start()
    with pytest.raises(ValueError, match=r"serve\.request_log\.url"):
        RequestLog("nosuchdb+nodriver://host/db").start()
    if importlib.util.find_spec("psycopg") is None:  # the driver is an optional extra
        with pytest.raises(ValueError, match="driver") as e:
            RequestLog("postgresql+psycopg://user:secret@localhost/db").start()
        assert "secret" not in str(e.value)
    with pytest.raises(ValueError, match="queue_size"):
        RequestLog("sqlite://", queue_size=0)


# --- durable answers: wait_written ------------------------------------------------------------


def test_wait_written_returns_once_the_rows_are_committed(db: tuple[Path, str]) -> None:
    """Every waiter wakes with True, and by then its row is readable from another connection;
    100 concurrent waiters share far fewer transactions than records (group commit)."""
    path, url = db
    rl = RequestLog(url, linger_ms=10_000).start()  # a linger this long would show as a hang
    commits: list[int] = []
    rl._on_write = commits.append

    async def one(i: int) -> tuple[bool | None, int]:
        seq = rl.put(request(f"d{i}"))
        ok = await rl.wait_written(seq, timeout=30)
        seen = sqlite3.connect(path).execute(
            "SELECT count(*) FROM requests WHERE request_id = ?", (f"d{i}",)
        )
        return ok, seen.fetchone()[0]

    async def main() -> list[tuple[bool | None, int]]:
        return await asyncio.gather(*(one(i) for i in range(100)))

    results = asyncio.run(main())
    rl.close()
    assert results == [(True, 1)] * 100
    assert sum(commits) == 100 * 2 and len(commits) < 100


def test_wait_written_reports_drops_and_timeouts(db: tuple[Path, str]) -> None:
    path, url = db
    RequestLog(url).start().close()
    ro = RequestLog(f"sqlite:///file:{path}?mode=ro&uri=true").start()
    locked = RequestLog(url, busy_timeout_ms=60_000).start()
    locker = sqlite3.connect(path, isolation_level=None)

    async def main() -> tuple[bool | None, bool | None, bool | None, bool | None]:
        failed = await ro.wait_written(ro.put(request("ro")), timeout=30)
        again = await ro.wait_written(1, timeout=30)  # already resolved: still reported dropped
        never = await ro.wait_written(None, timeout=30)  # dropped at the door (full / closed)
        late = await locked.wait_written(locked.put(request("late")), timeout=0.2)
        return failed, again, never, late

    try:
        locker.execute("BEGIN EXCLUSIVE")
        assert asyncio.run(main()) == (False, False, False, None)
    finally:
        locker.execute("COMMIT")
        locker.close()
    ro.close()
    locked.close()
    assert locked.written == 2  # the timed-out row was not lost, only answered before commit
