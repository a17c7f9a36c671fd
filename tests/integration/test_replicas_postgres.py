"""Two `paperops serve` replicas on one PostgreSQL request log, as scaled out (docs/scaling-out.md):
both start at once (one schema, created once), answer concurrent load while `paperops monitor
drift` reads the log, and live through a restart of the database server in the middle of it.

What must hold: every answered request is in the log exactly once (by its X-Request-ID) with all
its papers, no request hangs past the client's bound during the outage (the documented policy:
answers wait up to serve.request_log.durable_timeout_ms, then go out with the rows held and
retried, counted as unconfirmed), the replicas reconnect by themselves, and the drift report the
job stores reaches both replicas. Figures go to docs/scaling-out.md (printed with -s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from paperops.serve.launcher import paperops_command
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.gen_helpers import metric_value
from tests.integration.serve_helpers import TEST_ENV
from tests.pg import PgCluster, query
from tests.reliability.server import CLEAN_EXIT, ServerProcess, log_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = make_records(DEFAULT_COUNTS, seed=5)
PAPERS = [{"title": r["title"], "abstract": r["abstract"]} for r in RECORDS]
REQUESTS = 600  # in all, over both replicas; bounded in count and in time
LOAD_S = 90.0
CLIENTS = 4
OUTAGE_S = 2.0


def test_two_replicas_one_log_through_a_database_restart(
    pg_own_cluster: PgCluster,
    tfidf_bundle: Path,
    _prepared_once: Path,
    tmp_path: Path,
) -> None:
    url = pg_own_cluster.url(pg_own_cluster.new_database("replicas"))
    model = Path(shutil.copytree(tfidf_bundle, tmp_path / "model"))
    args = ["--model", str(model), "serve.drift_refresh_s=1"]
    servers = [
        ServerProcess(tmp_path / f"r{i}", [*args, *log_overrides(tmp_path / f"r{i}", url)])
        for i in range(2)
    ]
    with ThreadPoolExecutor(2) as pool:  # both at once: the schema is created under a lock
        urls = list(pool.map(lambda s: s.start(), servers))
    try:
        results: list[tuple[int, str, int, float]] = []  # status, request id, papers, seconds
        errors: list[str] = []
        lock, counter = threading.Lock(), iter(range(REQUESTS))
        deadline = time.monotonic() + LOAD_S
        answered = threading.Event()

        def client(k: int) -> None:
            with httpx.Client(timeout=15) as http:
                while time.monotonic() < deadline:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    batch = PAPERS[i % 40 : i % 40 + 1 + i % 3]
                    t0 = time.monotonic()
                    try:
                        r = http.post(urls[i % 2] + "/v1/classify", json={"papers": batch})
                    except httpx.HTTPError as e:  # a hang shows up here as a timeout
                        errors.append(f"{type(e).__name__}: {e}")
                        continue
                    with lock:
                        results.append(
                            (r.status_code, r.headers.get("X-Request-ID", ""), len(batch),
                             time.monotonic() - t0)
                        )  # fmt: skip
                        if len(results) >= REQUESTS // 4:
                            answered.set()

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, k) for k in range(CLIENTS)]
            assert answered.wait(LOAD_S)
            t_down = time.monotonic()
            pg_own_cluster.stop("fast")  # every connection of both replicas is cut
            time.sleep(OUTAGE_S)
            pg_own_cluster.start()
            outage = time.monotonic() - t_down
            with lock:
                during = [r for r in results if r[3] > 0.5]
            drift = subprocess.run(  # the drift job reads the shared log while load goes on
                [*paperops_command(), "monitor", "drift", "--json",
                 f"monitor.request_log='{url}'",
                 f"monitor.reference.processed_dir={_prepared_once}",
                 f"monitor.output_dir={tmp_path}/drift", "monitor.embedding.method=lsa",
                 "monitor.min_papers=20", "monitor.window=1h"],
                cwd=tmp_path, env={**os.environ, **TEST_ENV}, capture_output=True, text=True,
                timeout=300,
            )  # fmt: skip
            for f in futures:
                f.result(timeout=LOAD_S + 60)
        assert drift.returncode in (0, 3), drift.stderr[-3000:]  # 3: drift found (exit code)
        metrics = [httpx.get(u + "/metrics", timeout=10).text for u in urls]
        reports = []
        for u in urls:  # the stored report reaches every replica (serve.drift_refresh_s)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                r = httpx.get(u + "/v1/monitoring/drift", timeout=10)
                if r.status_code == 200:
                    break
                time.sleep(0.2)
            reports.append(r.status_code)
    finally:
        codes = [s.stop() for s in servers if s.proc is not None and s.proc.poll() is None]
    assert all(c in CLEAN_EXIT for c in codes), codes
    assert reports == [200, 200]

    assert errors == [], errors[:5]  # nothing hung past the client's 15 s bound
    statuses = {s for s, *_ in results}
    assert statuses <= {200, 503}, statuses
    ok = [(rid, n) for s, rid, n, _ in results if s == 200]
    assert len(ok) >= REQUESTS * 0.9
    logged = dict(query(url, "SELECT request_id, count(*) FROM requests GROUP BY request_id"))
    assert all(logged.get(rid) == 1 for rid, _ in ok), "an answered request is missing or doubled"
    papers = dict(query(url, "SELECT request_id, count(*) FROM predictions GROUP BY request_id"))
    assert all(papers.get(rid) == n for rid, n in ok)
    assert len({rid for rid, _ in ok}) == len(ok)
    dropped = sum(metric_value(m, "paperops_request_log_dropped_total") for m in metrics)
    unconfirmed = sum(metric_value(m, "paperops_request_log_unconfirmed_total") for m in metrics)
    assert dropped == 0
    batches = query(url, "SELECT count(*), sum(rows) FROM log_batches")[0]
    assert batches[1] == len(logged) + sum(papers.values())  # every row came in a keyed batch
    assert batches[0] < len(ok)  # durable answers shared commits (group commit)
    back = sum("database back" in s.tail(200_000) for s in servers)
    assert back >= 1, "no replica reported reconnecting"
    print(
        f"\nreplicas: 2, requests answered {len(ok)} of {len(results)} "
        f"({sum(n for _, n in ok)} papers), rows in the log {len(logged)} requests / "
        f"{sum(papers.values())} predictions, outage {outage:.1f} s, answers that waited "
        f"> 0.5 s {len(during)}, max wait {max(r[3] for r in results):.2f} s, unconfirmed "
        f"{unconfirmed:.0f}, dropped {dropped:.0f}, replicas reconnected {back}, "
        f"commits {batches[0]}"
    )
