"""Soak: mixed classify / predict / generate / stream / feedback traffic against a real
`paperops serve` (tfidf classifier + a tiny language model) for PAPEROPS_SOAK_S seconds
(60 in `make test`, 600 in `make soak`).

Holds when: no 5xx and no dropped connection, resident memory after the run within 10% of
what it was once warmed up, and the request log has exactly one row per answered request (and
one per paper, per generation, per feedback): nothing was lost, nothing was written twice.
PAPEROPS_SOAK_REPORT=path writes the figures as JSON (docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.gen_helpers import build_tiny_lm, metric_value
from tests.reliability.load import run_load, summary
from tests.reliability.server import (
    CLEAN_EXIT,
    ServerProcess,
    db_rows,
    log_overrides,
    running,
)

pytestmark = pytest.mark.integration

SOAK_S = float(os.environ.get("PAPEROPS_SOAK_S", "60"))
CLIENTS = 6  # moderate concurrency on a 2-core machine: the load generator needs a core too
MAX_REQUESTS = 2_000_000  # a hard bound far above what the duration allows
WARMUP_SHARE = 0.2  # memory is compared with its level after this share of the run
MAX_GROWTH = 0.10
RECORDS = make_records(DEFAULT_COUNTS, seed=7)  # unseen papers with the training vocabulary
PAPERS = [{"title": r["title"], "abstract": r["abstract"]} for r in RECORDS]


class MemoryProbe:
    """Samples the server's RSS every `every` seconds in a thread until stopped."""

    def __init__(self, server: ServerProcess, every: float = 1.0) -> None:
        self.server = server
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            self.samples.append((time.monotonic() - t0, self.server.rss_bytes()))

    def __enter__(self) -> MemoryProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def at(self, seconds: float) -> int:
        """The first sample taken at or after `seconds` into the run."""
        return next(rss for t, rss in self.samples if t >= seconds)


def test_soak_mixed_traffic(tfidf_bundle: Path, tmp_path: Path) -> None:
    model = Path(shutil.copytree(tfidf_bundle, tmp_path / "model"))
    lm = build_tiny_lm(tmp_path / "lm")
    server = ServerProcess(
        tmp_path, ["--model", str(model), "--generator", str(lm), *log_overrides(tmp_path)]
    )
    with running(server) as url:
        rss_ready = server.rss_bytes()
        with MemoryProbe(server) as memory:
            load = asyncio.run(
                run_load(url, PAPERS, clients=CLIENTS, duration_s=SOAK_S, max_requests=MAX_REQUESTS)
            )
        metrics = httpx.get(url + "/metrics", timeout=30).text
        assert server.stop() in CLEAN_EXIT, server.tail()

    figures = summary(load)
    warm = memory.at(SOAK_S * WARMUP_SHARE)
    end = memory.samples[-1][1]
    growth = (end - warm) / warm
    figures["memory_mb"] = {
        "ready": round(rss_ready / 2**20, 1),
        "warm": round(warm / 2**20, 1),
        "end": round(end / 2**20, 1),
        "peak": round(max(r for _, r in memory.samples) / 2**20, 1),
        "growth_after_warmup": round(growth, 4),
    }

    db = tmp_path / "requests.db"
    classify = load.answered("classify", "predict")
    generated = load.answered("generate", "stream")
    feedback = load.answered("feedback")
    logged_ids = db_rows(db, "SELECT request_id FROM requests")
    figures["log"] = {
        "requests_answered": len(classify),
        "requests_logged": len(logged_ids),
        "papers_answered": sum(o.papers for o in classify),
        "papers_logged": db_rows(db, "SELECT count(*) FROM predictions")[0][0],
        "generations_answered": len(generated),
        "generations_logged": db_rows(db, "SELECT count(*) FROM generations")[0][0],
        "feedback_answered": len(feedback),
        "feedback_logged": db_rows(db, "SELECT count(*) FROM feedback")[0][0],
        "dropped_rows": metric_value(metrics, "paperops_request_log_dropped_total"),
        "unconfirmed": metric_value(metrics, "paperops_request_log_unconfirmed_total"),
    }
    print("soak:", json.dumps(figures))
    if report := os.environ.get("PAPEROPS_SOAK_REPORT"):
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(figures, indent=2) + "\n")

    assert not load.failures(), load.failures()[:5]
    assert {o.status for o in load.outcomes} <= {200, 202}, load.statuses()
    assert min(figures["per_kind"].get(k, 0) for k in ("classify", "generate", "stream")) > 0
    assert growth < MAX_GROWTH, figures["memory_mb"]
    # one row per answered request, with the ids the clients were given
    assert sorted(r[0] for r in logged_ids) == sorted(o.request_id for o in classify)
    log = figures["log"]
    assert log["papers_logged"] == log["papers_answered"]
    assert log["generations_logged"] == log["generations_answered"]
    assert log["feedback_logged"] == log["feedback_answered"]
    assert log["dropped_rows"] == 0 and log["unconfirmed"] == 0
