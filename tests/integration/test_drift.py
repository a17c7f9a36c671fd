"""Drift end to end on real papers: a tfidf model trained on a slice of the dev data is served
by a real `paperops serve`; held-out papers of the same slice go through /v1/classify (with
feedback) and `paperops monitor drift` finds no drift; papers of a different archive mix do, and
the API then shows the new scores at /v1/monitoring/drift and as gauges on /metrics."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from paperops.data import taxonomy
from paperops.data.prepare import PrepareConfig, prepare
from paperops.requestlog.queries import read_predictions
from paperops.serve.launcher import paperops_command
from tests.conftest import _train_bundle, write_jsonl
from tests.integration.serve_helpers import TEST_ENV, serve_cli

pytestmark = pytest.mark.integration

EVERY = 20  # every 20th paper of the dev file (~5,600): the "training distribution"
SHIFTED_LINES = (40_000, 60_000)  # a stretch of the (archive-clustered) file: math, astro-ph,
SHIFTED_PAPERS = 300  # gr-qc and hep-th heavy, where the reference is ~40% cs


def _read_real(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(reference records, records of the shifted stretch not in the reference)."""
    reference, shifted = [], []
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f):
            if i % EVERY == 0:
                reference.append(json.loads(line))
            elif SHIFTED_LINES[0] <= i < SHIFTED_LINES[1]:
                shifted.append(json.loads(line))
    return reference, shifted


@pytest.fixture(scope="module")
def world(arxiv_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("drift")
    reference, later = _read_real(arxiv_path)
    raw = write_jsonl(base / "raw.jsonl", reference)
    processed = base / "processed"
    prepare(PrepareConfig(raw_paths=raw, output_dir=processed, min_count=30))
    bundle = _train_bundle(base, processed, "tfidf")
    labels = set(pd.read_parquet(processed / "train.parquet")["label"])
    shifted = []
    for r in later:
        if taxonomy.archive_of(r["categories"].split()[0]) in labels:
            shifted.append({"title": " ".join(r["title"].split()),
                            "abstract": " ".join(r["abstract"].split())})  # fmt: skip
    step = len(shifted) // SHIFTED_PAPERS  # spread over the stretch
    return {"base": base, "processed": processed, "bundle": bundle,
            "shifted": shifted[::step][:SHIFTED_PAPERS]}  # fmt: skip


def _classify(url: str, papers: list[dict[str, str]]) -> list[tuple[str, int]]:
    """Send papers in requests of 50; returns (request id, index) per paper."""
    ids = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(0, len(papers), 50):
            r = c.post("/v1/classify", json={"papers": papers[i : i + 50]})
            assert r.status_code == 200, r.text
            ids += [(r.json()["request_id"], j) for j in range(len(r.json()["results"]))]
    return ids


def _wait_logged(db: Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(read_predictions(f"sqlite:///{db}")) < n:
        assert time.monotonic() < deadline, "the request log did not catch up"
        time.sleep(0.2)


def _drift(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    base = world["base"]
    cmd = [
        *paperops_command(), "monitor", "drift", "--json",
        f"monitor.request_log=sqlite:///{base}/server/requests.db",
        f"monitor.reference.processed_dir={world['processed']}",
        f"monitor.output_dir={base}/reports/drift",
        "monitor.embedding.method=lsa", "monitor.min_papers=100", "monitor.min_feedback=30",
        *args,  # later overrides win
    ]  # fmt: skip
    env = {**os.environ, **TEST_ENV}
    return subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=300)


def _metric(text: str, name: str, check: str) -> float:
    prefix = f'{name}{{check="{check}"}} '
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_held_out_papers_do_not_drift_and_a_new_archive_mix_does(world: dict[str, Any]) -> None:
    base = world["base"]
    test = pd.read_parquet(world["processed"] / "test.parquet")
    held_out = [{"title": t, "abstract": a} for t, a in zip(test.title, test.abstract, strict=True)]
    db = base / "server" / "requests.db"  # where serve_cli puts the request log
    with serve_cli(
        base / "server", "--model", str(world["bundle"]), "serve.drift_refresh_s=0"
    ) as url:
        assert httpx.get(url + "/v1/monitoring/drift").status_code == 404
        ids = _classify(url, held_out)
        with httpx.Client(base_url=url, timeout=30) as c:  # users report the true labels
            for (rid, idx), label in zip(ids, test.label, strict=True):
                body = {"request_id": rid, "index": idx, "label": label}
                assert c.post("/v1/feedback", json=body).status_code == 202
        _wait_logged(db, len(held_out))
        time.sleep(1.0)  # feedback rows share the writer queue: let the last batch land

        calm = _drift(world, "--window", "24h", "--fail-on-drift")
        assert calm.returncode == 0, calm.stdout + calm.stderr
        report = json.loads(calm.stdout)
        assert report["status"] == "ok" and report["window"]["papers"] == len(held_out)
        assert report["drifted"] is False, {c: (v["score"], v["threshold"])
                                            for c, v in report["checks"].items()}  # fmt: skip
        assert all(c["status"] == "ok" for c in report["checks"].values()), report["checks"]
        assert report["checks"]["embedding"]["score"] < 0.65
        assert report["checks"]["accuracy"]["feedback"] == len(held_out)

        served = httpx.get(url + "/v1/monitoring/drift").json()
        assert served["created_at"] == report["created_at"]
        metrics = httpx.get(url + "/metrics").text
        assert _metric(metrics, "paperops_drift_score", "embedding") == pytest.approx(
            report["checks"]["embedding"]["score"]
        )
        assert _metric(metrics, "paperops_drift_detected", "label") == 0

        _classify(url, world["shifted"])
        _wait_logged(db, len(held_out) + SHIFTED_PAPERS)
        # the most recent SHIFTED_PAPERS papers: exactly the new traffic
        shifted = _drift(world, "--window", "all", f"monitor.max_papers={SHIFTED_PAPERS}",
                         "--fail-on-drift")  # fmt: skip
        assert shifted.returncode == 3, shifted.stdout + shifted.stderr
        report = json.loads(shifted.stdout)
        assert {"label", "embedding", "vocabulary"} <= set(report["drifted_checks"]), report
        assert report["checks"]["accuracy"]["status"] == "skipped"  # no feedback on these
        mix = {
            r["label"]: (r["reference"], r["window"]) for r in report["checks"]["label"]["labels"]
        }
        assert mix["cs"][1] < mix["cs"][0] / 2  # the new traffic is mostly not computer science

        metrics = httpx.get(url + "/metrics").text
        assert _metric(metrics, "paperops_drift_detected", "label") == 1
        assert _metric(metrics, "paperops_drift_score", "label") > _metric(
            metrics, "paperops_drift_threshold", "label"
        )
        assert "accuracy" not in httpx.get(url + "/metrics").text.split("paperops_drift_score")[1]
        assert httpx.get(url + "/v1/monitoring/drift").json()["drifted"] is True

    out = base / "reports" / "drift"
    assert json.loads((out / "drift.json").read_text())["drifted"] is True
    page = (out / "drift.html").read_text()
    assert "DRIFT" in page and "evidently.html" in page
    assert (out / "evidently.html").stat().st_size > 10_000
    history = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["drifted"] for h in history] == [False, True]


def test_the_encoder_path_embeds_with_a_sentence_encoder(
    world: dict[str, Any], tiny_encoder_dir: Path
) -> None:
    """The default method (a sentence encoder) on the tiny test encoder: same report shape."""
    base = world["base"]
    if not (base / "server" / "requests.db").is_file():
        pytest.skip("needs the request log of the test above")
    proc = _drift(world, "--window", "all", "monitor.embedding.method=encoder",
                  f"monitor.embedding.encoder={tiny_encoder_dir}",
                  f"monitor.embedding.cache_dir={base}/cache", "monitor.reference.max_papers=300",
                  "monitor.max_papers=300")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    emb = json.loads(proc.stdout)["checks"]["embedding"]
    assert emb["status"] == "ok" and "sentence encoder" in emb["embeddings"]
    assert list((base / "cache").glob("*/shard-*.safetensors"))  # the reference sample is cached


def test_bad_window_and_missing_log_are_clear_errors(world: dict[str, Any], tmp_path: Path) -> None:
    bad = _drift(world, "--window", "yesterday")
    assert bad.returncode == 2 and "monitor.window" in bad.stderr
    cmd = [*paperops_command(), "monitor", "drift", f"monitor.request_log=sqlite:///{tmp_path}/no.db",
           f"monitor.reference.processed_dir={world['processed']}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **TEST_ENV}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no request log" in proc.stderr
    assert sys.executable  # the CLI ran from this interpreter's environment
