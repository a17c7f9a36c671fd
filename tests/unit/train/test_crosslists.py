"""Fitting the cross-list head on prepared data: unreliable rows never train it; the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paperops.data.datamodule import TextSplit
from paperops.data.prepare import PrepareConfig, prepare
from paperops.models.multilabel import CrossListConfig, Suggestion
from paperops.train.crosslists import fit_cross_lists, fit_from_prepared, set_metrics
from tests.conftest import make_records, write_jsonl

CONFIG = CrossListConfig(min_papers=5, min_support=3, min_df=1, max_features=None)


def _split(name: str, n: int, seed: int) -> TextSplit:
    """Reliable rows list cs.LG (+ stat.ML for half); rows of `bad/feed` cross-list math.ST,
    which no reliable row does."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        bad = i % 3 == 0
        cats = "cs.LG math.ST" if bad else ("cs.LG stat.ML" if i % 2 else "cs.LG")
        words = ["learning", "model"] + (["statistics"] if "stat.ML" in cats else [])
        words += ["estimator"] if bad else []
        rows.append(
            {"categories": cats, "label": "cs.LG", "source": "bad/feed" if bad else "good/feed",
             "text": " ".join(rng.permutation(words)) + f" paper{i}"}
        )  # fmt: skip
    frame = pd.DataFrame(rows)
    return TextSplit(name, frame, frame["text"].tolist(), np.zeros(n, dtype=np.int64))


def test_rows_from_unreliable_sources_never_train_the_head() -> None:
    names = ("train", "val", "calibration")
    splits = {name: _split(name, 60, seed) for seed, name in enumerate(names)}
    head = fit_cross_lists(splits, ["bad/feed"], CONFIG, primary_labels=["cs.LG"])
    assert "math.ST" not in head.labels and "stat.ML" in head.labels
    assert head.info["excluded_rows"]["train"] == {"bad/feed": 20}
    assert head.info["rows"]["train"] == 40
    # the control: trusting the feed puts its cross-list into the head
    trusting = fit_cross_lists(splits, [], CONFIG, primary_labels=["cs.LG"])
    assert "math.ST" in trusting.labels and trusting.info["rows"]["train"] == 60


def test_no_reliable_row_is_a_clear_error() -> None:
    splits = {name: _split(name, 30, 0) for name in ("train", "val", "calibration")}
    for s in splits.values():
        s.frame["source"] = "bad/feed"
    with pytest.raises(ValueError, match="no train row has a reliable category list"):
        fit_cross_lists(splits, ["bad/feed"], CONFIG)


def test_fit_from_a_prepared_category_directory(tmp_path: Path) -> None:
    records = make_records({"cs.LG": 40, "math.AG": 30, "hep-th": 30}, seed=3)
    for i, r in enumerate(records):
        r["source"] = "partial/feed" if i % 4 == 0 else "full/feed"
    raw = write_jsonl(tmp_path / "raw.jsonl", records)
    out = tmp_path / "processed"
    prepare(PrepareConfig(raw_paths=raw, output_dir=out, label_level="category", min_count=8))
    head = fit_from_prepared(out, CONFIG, partial_sources=["partial/feed"])
    assert {"cs.LG", "math.AG", "hep-th"} <= set(head.labels)  # every primary label
    assert head.info["unreliable_sources"] == ["partial/feed"]
    assert sum(head.info["excluded_rows"]["train"].values()) > 0
    assert set(head.info["excluded_rows"]["train"]) == {"partial/feed"}


def _sug(*labels: str) -> list[Suggestion]:
    return [Suggestion(lab, 0.5, lab, lab.split(".")[0]) for lab in labels]


def test_set_metrics_by_hand() -> None:
    suggested = [_sug("cs.LG", "stat.ML"), _sug("math.AG"), _sug("cs.CV", "cs.LG")]
    listed = [("cs.LG",), ("math.AG", "math.NT"), ("cs.LG", "cs.CV", "eess.IV")]
    m = set_metrics(suggested, listed, ["cs.LG", "math.AG", "cs.LG"])
    # per paper F1: 2*1/3, 2*1/3, 2*2/5
    assert m["sample_f1"] == pytest.approx((2 / 3 + 2 / 3 + 4 / 5) / 3)
    assert m["micro_f1"] == pytest.approx(2 * 4 / (5 + 6))
    assert (m["top_listed"], m["primary_in_set"], m["mean_set_size"]) == (1.0, 1.0, 5 / 3)
    assert m["suggestion_precision"] == pytest.approx(1 / 2)  # stat.ML wrong, cs.CV right
    # restricted to frequent labels: math.NT and eess.IV no longer count against recall
    kept = set_metrics(suggested, listed, ["cs.LG", "math.AG", "cs.LG"], keep={"cs.LG", "cs.CV",
                       "math.AG", "stat.ML"})  # fmt: skip
    assert kept["sample_f1"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    with pytest.raises(ValueError, match="aligned"):
        set_metrics(suggested, listed[:2], ["cs.LG"] * 3)


def test_train_experiment_category_puts_the_head_in_the_bundle_and_export_keeps_it(
    category_bundle: Path, tmp_path: Path
) -> None:
    from paperops.config import load_config
    from paperops.export.classifier import export_bundle
    from paperops.models.base import load_classifier
    from paperops.models.multilabel_io import HEAD_DIR, load_cross_lists
    from paperops.train import train

    out, processed = category_bundle, category_bundle.parent / "processed"
    head = load_cross_lists(out)
    assert head is not None and {"cs.LG", "math.AG", "hep-th"} <= set(head.labels)
    info = json.loads((out / "training.json").read_text())["cross_lists"]
    assert info["labels"] == len(head.labels) and info["val"]["primary_in_set"] == 1.0
    # the head shares the tfidf model's vectorizer: one tokenization serves both
    primary = load_classifier(out)
    assert info["shared"] is True and head.shared
    x = primary.vectorizer.transform(["Cohomology of moduli stacks"])
    shared = load_cross_lists(out, primary.vectorizer)
    assert np.array_equal(shared.predict_proba_features(x), head.predict_proba_features(x))
    assert np.array_equal(
        primary.logits_from_features(x), primary.logits(["Cohomology of moduli stacks"])
    )
    res = export_bundle(out, tmp_path / "export", processed_dir=processed)
    assert (tmp_path / "export" / HEAD_DIR).is_dir()
    assert res.parity["cross_lists"]["max_abs_diff"] == 0.0
    # archive-level data gets no head, and says why
    cfg_archive = load_config([f"train.processed_dir={tmp_path / 'arch'}",
                               f"train.output_dir={tmp_path / 'arch_bundle'}",
                               f"paths.work={tmp_path / 'work'}", "train.track=false",
                               "model.min_df=1", "evaluate.alpha=0.2",
                               "train.cross_lists.enabled=true"])  # fmt: skip
    raw = out.parent / "raw.jsonl"
    prepare(PrepareConfig(raw_paths=raw, output_dir=tmp_path / "arch", min_count=8))
    train(cfg_archive)
    assert load_cross_lists(tmp_path / "arch_bundle") is None
    skipped = json.loads((tmp_path / "arch_bundle" / "training.json").read_text())["cross_lists"]
    assert "label_level is 'archive'" in skipped["skipped"]
