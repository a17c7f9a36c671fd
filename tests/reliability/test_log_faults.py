"""The request log when things go wrong, against a real `paperops serve`:

- kill -9 in the middle of mixed traffic, then a restart on the same SQLite file: the database
  passes `PRAGMA integrity_check`, every request that got an answer before the kill has its row
  (durable answers: a response is sent once its rows are committed), and the restarted server
  appends to it.
- a read-only log (SQLite opened `mode=ro`, as on a read-only volume) and a full disk (the
  server runs under a file-size limit, so SQLite's writes fail with "database or disk is full"):
  every request is still answered, `paperops_request_log_dropped_total` counts the rows lost, and
  a disk that fills up mid-run leaves a database that is intact up to the last committed batch.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from paperops.requestlog.writer import RequestLog
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.gen_helpers import build_tiny_lm, metric_value
from tests.reliability.load import run_load
from tests.reliability.server import (
    CLEAN_EXIT,
    ServerProcess,
    db_rows,
    log_overrides,
    running,
)

pytestmark = pytest.mark.integration

RECORDS = make_records(DEFAULT_COUNTS, seed=11)
PAPERS = [{"title": r["title"], "abstract": r["abstract"]} for r in RECORDS]
LONG = [{"title": p["title"], "abstract": ((p["abstract"] + " ") * 60)[:5900]} for p in PAPERS]


@pytest.fixture(scope="module")
def models(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("log_faults")
    return Path(shutil.copytree(tfidf_bundle, base / "model")), build_tiny_lm(base / "lm")


def integrity(db: Path) -> str:
    return db_rows(db, "PRAGMA integrity_check")[0][0]


def test_kill_9_mid_load_loses_no_answered_request(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    model, lm = models
    db = tmp_path / "requests.db"
    args = ["--model", str(model), "--generator", str(lm), *log_overrides(tmp_path)]
    server = ServerProcess(tmp_path / "first", args)
    url = server.start()

    async def load_then_kill() -> list:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_load(url, PAPERS, clients=6, duration_s=60, max_requests=5000, stop=stop)
        )
        # kill while requests are in flight: after a few hundred answers, bounded by time
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.25)
            if db.exists() and db_rows(db, "SELECT count(*) FROM requests")[0][0] >= 200:
                break
        server.kill(signal.SIGKILL)
        stop.set()
        return (await task).outcomes

    outcomes = asyncio.run(load_then_kill())
    assert server.proc is not None and server.proc.returncode == -signal.SIGKILL
    answered = [o for o in outcomes if o.status in (200, 202)]
    cut_off = [o for o in outcomes if o.status == 0]
    assert len(answered) >= 200 and cut_off, "the kill did not land mid-load"
    assert not [o for o in outcomes if o.status >= 500]

    # the file as the crash left it (WAL not checkpointed): intact, every answer present
    assert (tmp_path / "requests.db-wal").exists()
    assert integrity(db) == "ok"
    logged = {r[0] for r in db_rows(db, "SELECT request_id FROM requests")}
    logged |= {r[0] for r in db_rows(db, "SELECT request_id FROM generations")}
    missing = [o for o in answered if o.kind != "feedback" and o.request_id not in logged]
    assert not missing, f"{len(missing)} answered requests have no log row: {missing[:3]}"
    n_fb = sum(o.kind == "feedback" for o in answered)
    print(f"kill -9: {len(answered)} answered before the kill, {len(cut_off)} cut off, 0 missing")
    assert db_rows(db, "SELECT count(*) FROM feedback")[0][0] >= n_fb

    # a restart on the same file recovers it and appends
    before = db_rows(db, "SELECT count(*) FROM requests")[0][0]
    again = ServerProcess(tmp_path / "second", args)
    with running(again) as url2, httpx.Client(base_url=url2, timeout=30) as http:
        for p in PAPERS[:10]:
            assert http.post("/predict", json=p).status_code == 200
    assert again.proc is not None and again.proc.returncode in CLEAN_EXIT
    assert db_rows(db, "SELECT count(*) FROM requests")[0][0] == before + 10
    assert integrity(db) == "ok"


def test_a_read_only_log_drops_rows_but_serving_goes_on(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    model, lm = models
    db = tmp_path / "requests.db"
    RequestLog(f"sqlite:///{db}").start().close()  # the tables exist, as on a mounted volume
    ro_url = f"sqlite:///file:{db}?mode=ro&uri=true"
    server = ServerProcess(
        tmp_path,
        ["--model", str(model), "--generator", str(lm), *log_overrides(tmp_path, ro_url)],
    )
    with running(server) as url, httpx.Client(base_url=url, timeout=60) as http:
        n_papers = 0
        for i in range(30):
            batch = PAPERS[i : i + 1 + i % 4]
            n_papers += len(batch)
            assert http.post("/v1/classify", json={"papers": batch}).status_code == 200
        for _ in range(5):
            r = http.post("/v1/generate", json={"prompt": "the patient", "max_new_tokens": 8})
            assert r.status_code == 200, r.text
        assert http.get("/readyz").status_code == 200
        expected = 30 + n_papers + 5
        deadline = time.monotonic() + 30  # the last batch may still be failing
        while time.monotonic() < deadline:
            text = http.get("/metrics").text
            if metric_value(text, "paperops_request_log_dropped_total") >= expected:
                break
            time.sleep(0.1)
        assert metric_value(text, "paperops_request_log_dropped_total") == expected
        assert metric_value(text, "paperops_request_log_written_total") == 0
        assert metric_value(text, "paperops_request_log_unconfirmed_total") == 0
    assert "readonly" in server.tail(20_000).lower()
    assert db_rows(db, "SELECT count(*) FROM requests")[0][0] == 0


def test_a_full_disk_drops_rows_but_serving_goes_on(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    """The server may write at most 256 KiB to any file: the log's WAL soon hits it."""
    model, _ = models
    db = tmp_path / "requests.db"
    server = ServerProcess(
        tmp_path, ["--model", str(model), *log_overrides(tmp_path)], file_size_limit=256 * 1024
    )
    answered = 0
    with running(server) as url, httpx.Client(base_url=url, timeout=60) as http:
        dropped = 0.0
        for i in range(400):  # bounded; 8 papers of ~6 KB per request fill 256 KiB quickly
            batch = LONG[(i * 8) % 40 : (i * 8) % 40 + 8]
            r = http.post("/v1/classify", json={"papers": batch})
            assert r.status_code == 200, r.text
            answered += 1
            dropped = metric_value(http.get("/metrics").text, "paperops_request_log_dropped_total")
            if dropped:
                break
        assert dropped > 0, "the file-size limit was never reached"
        for p in PAPERS[:20]:  # still serving once the disk is full
            assert http.post("/predict", json=p).status_code == 200
        assert http.get("/readyz").status_code == 200
        text = http.get("/metrics").text
        written = metric_value(text, "paperops_request_log_written_total")
        lost = metric_value(text, "paperops_request_log_dropped_total")
    assert "full" in server.tail(20_000).lower()
    # what was committed before the disk filled up is intact and readable
    assert integrity(db) == "ok"
    rows = db_rows(db, "SELECT count(*) FROM requests")[0][0]
    preds = db_rows(db, "SELECT count(*) FROM predictions")[0][0]
    assert 0 < rows < answered + 20
    assert rows + preds >= written > 0
    print(f"full disk: {answered + 20} answered, {rows} requests kept, {lost:.0f} rows dropped")
