"""benchmarks/quality.py: the in-run baseline trains on the prepared train split, a category
model's archive roll-up is read off its confusion matrix, and the targets are judged right."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from benchmarks import quality as q
from benchmarks.quality_report import champion, goal_rows, markdown


def test_baseline_trains_on_the_train_split_and_scores_the_test_split(_prepared_once: Path):
    b = q.baseline(_prepared_once)
    assert b["train_size"] > b["test_size"] > 0
    assert 0.5 < b["accuracy"] <= 1 and 0 < b["macro_f1"] <= 1


def test_archive_rollup_counts_errors_inside_an_archive_as_right() -> None:
    m = {"labels": ["cs.CV", "cs.LG", "math.AG"],
         "confusion_matrix": [[5, 3, 2], [1, 8, 1], [0, 0, 10]]}  # fmt: skip
    assert q._archive_rollup(m) == (5 + 3 + 1 + 8 + 10) / 30
    assert (
        q._archive_rollup({"labels": ["cs", "math"], "confusion_matrix": [[1, 0], [0, 1]]}) is None
    )


def _model(acc: float, f1: float, cov: float = 0.9) -> dict[str, Any]:
    conf = {"method": "aps", "target": 0.9, "coverage": cov, "mean_set_size": 1.5,
            "min_class_coverage": 0.8, "worst_class": "stat"}  # fmt: skip
    return {"accuracy": acc, "top3_accuracy": 0.97, "macro_f1": f1, "ece_after": 0.02,
            "train_seconds": 3.0, "test_size": 100, "rows": {"train": 700},
            "conformal": conf, "conformal_mondrian": {**conf, "coverage": cov + 0.01}}  # fmt: skip


def _result() -> dict[str, Any]:
    base = {"accuracy": 0.80, "macro_f1": 0.50, "test_size": 100, "train_size": 700,
            "train_seconds": 1.0}  # fmt: skip
    block = {"baseline": base, "models": {"tfidf": _model(0.80, 0.50)}, "n_classes": 9,
             "holdout_sources": [], "test_size": 100}  # fmt: skip
    return {"raw_files": ["a.jsonl.gz"], "scale": "cpu, cap 10", "measured": "today",
            "device": "2 CPU cores",
            "splits": {"stratified": copy.deepcopy(block),
                       "source": {**copy.deepcopy(block), "holdout_sources": ["x/y"]}},
            "category": copy.deepcopy(block)}  # fmt: skip


def test_goal_rows_judge_each_target() -> None:
    r = _result()
    rows = goal_rows(r)
    assert any("source: macro-F1 >= baseline + 0.10" in x and x.endswith("**no** |") for x in rows)
    r["splits"]["source"]["models"]["better"] = _model(0.81, 0.61, cov=0.88)
    rows = goal_rows(r)
    src = next(x for x in rows if "source: macro-F1" in x)
    assert "0.610 (better)" in src and src.endswith("yes |")
    assert next(x for x in rows if "source: conformal" in x).endswith("yes |")
    page = markdown(r)
    assert "Held-out sources: `x/y`" in page and "| better |" in page


def test_champion_is_best_out_of_source_macro_f1_without_losing_accuracy() -> None:
    r = _result()
    src = r["splits"]["source"]["models"]
    src["hybrid"] = _model(0.81, 0.60)
    src["embedding"] = _model(0.70, 0.61)  # higher macro-F1, but accuracy below the baseline's
    assert champion(r) == "hybrid"
    assert "**hybrid**" in markdown(r)
    assert next(x for x in goal_rows(r) if "source: macro-F1" in x).startswith(
        "| source: macro-F1 >= baseline + 0.10 | >= 0.600 | 0.600 (hybrid)"
    )
    src["hybrid"]["accuracy"] = 0.79  # only the tfidf keeps the baseline's accuracy
    assert champion(r) == "tfidf"
    src["tfidf"]["accuracy"] = 0.79  # nobody keeps it: the best macro-F1 anyway
    assert champion(r) == "embedding"
    assert champion({"splits": {}}) is None
