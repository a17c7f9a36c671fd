"""The retrain path for real: drift in the request log -> `paperops monitor drift --retrain` runs
`dvc repro` on fresh data in a scratch DVC project -> a new registry version, and the gate (not
the drift job) decides whether it becomes champion."""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import pytest

from paperops.monitor.retrain import retrain
from paperops.requestlog.schema import PaperLogRow, RequestRecord
from paperops.requestlog.writer import RequestLog
from tests.integration.test_dvc_pipeline import CLASSES, _run, project  # noqa: F401

pytestmark = pytest.mark.integration


def _log_shifted(db: Path, n: int = 120) -> None:
    """Papers of one class only, in words the training data never used."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with RequestLog(f"sqlite:///{db}").start() as log:
        for i in range(n):
            paper = PaperLogRow(
                index=0,
                title=f"Protein folding kinetics study {i}",
                abstract=f"We measure enzyme binding affinity and folding rates in assay {i}.",
                label="hep-th",
                confidence=0.55,
                prediction_set=["hep-th"],
                top=[("hep-th", 0.55)],
            )
            rec = RequestRecord(f"r{i}", time.time(), "/v1/classify", 200, 3.0, "m", "1", [paper])
            assert log.log(rec)


def _append_fresh_papers(project_dir: Path, n: int = 80) -> None:
    """New papers in the raw snapshot: the 'fresh data' DVC sees as a changed dependency."""
    raw = project_dir.parent / "shared" / "data" / "arxiv" / "arxiv-metadata.jsonl.gz"
    with gzip.open(raw, "rt") as f:
        lines = f.read().splitlines()
    for i in range(n):
        cat = list(CLASSES)[i % 4]
        lines.append(json.dumps({
            "id": f"2202.{i:05d}", "title": f"Fresh paper {i} on {CLASSES[cat].split()[1]}",
            "abstract": f"New results on {CLASSES[cat]} in regime {i}, improving bound {i * 3}.",
            "categories": cat, "update_date": "2022-02-01",
        }))  # fmt: skip
    with gzip.open(raw, "wt") as f:
        f.write("\n".join(lines) + "\n")


def test_drift_triggers_dvc_repro_and_the_gate_decides(project: Path) -> None:  # noqa: F811
    drift = [
        sys.executable, "-m", "paperops.cli", "monitor", "drift", "--window", "all", "--retrain",
        "monitor.embedding.method=lsa", "monitor.min_papers=50", "monitor.reference.max_papers=150",
        "monitor.retrain.commands=[[dvc,repro,evaluate_tfidf]]",
    ]  # fmt: skip
    _run([sys.executable, "-m", "dvc", "repro", "evaluate_tfidf"], project, timeout=600)
    _log_shifted(project / "data" / "requests" / "requests.db")
    _append_fresh_papers(project)

    proc = _run(drift, project, timeout=900)
    assert "retrain: dvc repro evaluate_tfidf -> 0" in proc.stdout, proc.stdout
    report = json.loads((project / "reports" / "drift" / "drift.json").read_text())
    assert {"label", "vocabulary"} <= set(report["drifted_checks"])
    rt = report["retrain"]
    assert rt["triggered"] and rt["ok"] and rt["commands"][0]["returncode"] == 0
    assert rt["new_versions"] == [2] and rt["champion_before"] == "1"
    # the gate, not the drift job, picked the champion: it is v2 only if v2 scored better
    models = _run([sys.executable, "-m", "paperops.cli", "models", "list"], project).stdout
    assert rt["champion_after"] in ("1", "2") and "champion" in models
    assert rt["promoted"] == (rt["champion_after"] == "2")
    assert "Retrain" in (project / "reports" / "drift" / "drift.html").read_text()

    # nothing changed since: a second drift run retrains again, but DVC has nothing to do
    again = _run(drift, project, timeout=300)
    assert "new versions none" in again.stdout and "(kept)" in again.stdout


def test_no_drift_runs_nothing_and_a_failing_stage_stops_the_chain(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    calm = {"drifted_checks": []}
    out = retrain(calm, triggers=["label"], commands=[touch], timeout_s=30, logger_cfg=None)
    assert out == {"triggered": False, "reason": "no trigger check drifted", "triggers": ["label"]}
    assert not marker.exists()
    # drift only in a check that is not a trigger: still nothing
    out = retrain({"drifted_checks": ["length"]}, triggers=["label"], commands=[touch],
                  timeout_s=30, logger_cfg=None)  # fmt: skip
    assert not out["triggered"] and not marker.exists()

    fail = [sys.executable, "-c", "raise SystemExit(4)"]
    out = retrain({"drifted_checks": ["label"]}, triggers=["label"], commands=[fail, touch],
                  timeout_s=30, logger_cfg=None)  # fmt: skip
    assert out["triggered"] and not out["ok"] and [c["returncode"] for c in out["commands"]] == [4]
    assert not marker.exists()  # the stage after a failure never ran
    missing = retrain({"drifted_checks": []}, triggers=[], commands=[["no-such-tool-xyz"]],
                      timeout_s=30, logger_cfg=None, force=True)  # fmt: skip
    assert missing["forced"] and missing["commands"][0]["returncode"] == 127
