"""benchmarks/explain.py: one family end to end on the small prepared data (train, explain,
the deletion test, the API-shaped timing) and the section renders from its results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import explain as bench


def test_a_family_block_and_its_section(prepared_dir: Path, tmp_path: Path) -> None:
    # the tiny calibration split has 6 rows: alpha 0.1 needs >= 9
    block = bench._family(
        "tfidf", prepared_dir, tmp_path, n=12, cap=50, extra=["evaluate.alpha=0.2"]
    )
    assert block["method"] == "linear" and block["k"] == 5 and block["cap"] == 50
    assert block["n"] + block["skipped"] == min(12, block["test_size"])
    assert block["explain_ms_per_paper"] > 0
    assert 0.0 <= block["win_rate"] <= 1.0 and "other_k" not in block
    occlusion = {**block, "method": "occlusion", "k": 2, "other_k": {"5": block, "1": block}}
    result = {
        "measured": "2026-01-01",
        "machine": "2 cores",
        "split": "stratified, archive level",
        "papers": 12,
        "target": 2.0,
        "faithfulness_ratio": block["ratio"],
        "families": {"tfidf": block, "embedding": occlusion},
    }
    page = bench.markdown(result)
    assert page.startswith("## Explanation faithfulness (`benchmarks/explain.py`)")
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| tfidf",
        "| embedding",
        "| embedding (k=1)",
        "| embedding (k=5)",
    ]
    assert "Not measured on real data here: hybrid" in page


def test_merging_keeps_the_notes_of_the_families_it_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PAPEROPS_BENCH_MERGE=1 re-runs some families: the notes of the others stay."""
    import benchmarks.explain as bx

    results = tmp_path / "results"
    results.mkdir()
    old = {"families": {"tfidf": {"ratio": 3.0}, "embedding": {"ratio": 4.0}},
           "notes": ["embedding: cap 1,500", "tfidf: the served family"]}  # fmt: skip
    (results / "explain.json").write_text(json.dumps(old))
    monkeypatch.setattr(bx, "RESULTS", results)
    monkeypatch.setattr(bx, "_prepare", lambda *a, **k: tmp_path)
    monkeypatch.setattr(bx, "_family", lambda family, *a: {"ratio": 9.0})
    monkeypatch.setattr(bx, "write_result", lambda name, data: data)
    monkeypatch.setenv("PAPEROPS_BENCH_MERGE", "1")
    monkeypatch.setenv("PAPEROPS_BENCH_EXPLAIN_FAMILIES", "tfidf")
    r = bx.run()
    assert r["families"] == {"tfidf": {"ratio": 9.0}, "embedding": {"ratio": 4.0}}
    assert r["notes"] == ["embedding: cap 1,500"] and r["faithfulness_ratio"] == 9.0
