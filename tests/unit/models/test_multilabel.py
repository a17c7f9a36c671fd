"""The cross-list head on synthetic papers whose listed categories are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paperops.models.base import ModelLoadError
from paperops.models.multilabel import CrossListConfig, CrossListHead
from paperops.models.multilabel_io import (
    HEAD_DIR,
    HEAD_FILE,
    WEIGHTS_FILE,
    load_cross_lists,
    load_head,
    save_head,
)

LABELS = ["cs.LG", "stat.ML", "cs.CV", "math.ST"]
FILLER = ["we", "study", "a", "method", "and", "report", "results", "on", "data", "with"]


def papers(n: int, seed: int) -> tuple[list[str], list[tuple[str, ...]]]:
    """Each paper lists a primary and, 40% of the time, one cross-list. Each label's words
    appear Binomial(8, p) times: p = 0.8 for the primary, 0.5 for a cross-list, 0.12 for an
    unlisted label; so a few stray words make a wrong suggestion and a threshold matters."""
    rng = np.random.default_rng(seed)
    texts, sets = [], []
    for _ in range(n):
        listed = [LABELS[rng.integers(len(LABELS))]]
        if rng.random() < 0.4:
            listed.append(str(rng.choice([x for x in LABELS if x != listed[0]])))
        words = list(rng.choice(FILLER, size=12))
        for lab in LABELS:
            p = 0.8 if lab == listed[0] else 0.5 if lab in listed else 0.12
            tag = lab.replace(".", "").lower()
            words += [f"{tag}{k}" for k in rng.integers(0, 6, size=rng.binomial(8, p))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        sets.append(tuple(listed))
    return texts, sets


@pytest.fixture(scope="module")
def head() -> CrossListHead:
    cfg = CrossListConfig(precision=0.8, min_support=20, min_df=1, max_features=None)
    labels = [*LABELS, "q-bio.NC"]  # listed by no paper: never suggested
    return CrossListHead(labels, cfg).fit(papers(1500, 1), papers(1000, 2), papers(2000, 3))


def _extra_precision(head: CrossListHead, texts: list[str], sets: list[tuple[str, ...]]) -> float:
    """Precision of the suggestions beyond the primary (the head's top label, first in each
    list: the head was calibrated that way)."""
    out = head.suggest(texts)
    hits = [x.label in s for sug, s in zip(out, sets, strict=True) for x in sug[1:]]
    assert len(hits) > 300  # enough suggestions for the estimate to mean something
    return float(np.mean(hits))


def test_suggestions_hold_the_stated_precision_on_fresh_papers(head: CrossListHead) -> None:
    texts, sets = papers(4000, 4)
    # the lowest threshold that reaches 0.8 on 2,000 calibration papers is a little optimistic:
    # 0.73-0.82 over 5 seeds of every split, 0.78 here
    assert _extra_precision(head, texts, sets) >= 0.8 - 0.05
    # the same head with every threshold at 0.05 misses it: the check can fail
    strict = head.thresholds.copy()
    head.thresholds = np.where(np.isfinite(strict), 0.05, strict)
    try:
        assert _extra_precision(head, texts, sets) < 0.6
    finally:
        head.thresholds = strict


def test_a_label_never_seen_is_never_suggested(head: CrossListHead) -> None:
    j = head.labels.index("q-bio.NC")
    assert head.thresholds[j] == np.inf
    assert head.info["threshold_source"]["q-bio.NC"] == "never"
    texts, _ = papers(500, 5)
    assert all(x.label != "q-bio.NC" for sug in head.suggest(texts) for x in sug)


def test_suggestions_are_ordered_named_and_include_the_primary(head: CrossListHead) -> None:
    texts, _ = papers(200, 6)
    primaries = ["math.ST"] * len(texts)
    for sug in head.suggest(texts, primaries):
        assert "math.ST" in [x.label for x in sug]
        probs = [x.probability for x in sug]
        assert probs == sorted(probs, reverse=True) and len(sug) <= head.config.max_labels
        assert all(0.0 <= p <= 1.0 for p in probs)
    first = head.suggest(["cslg0 cslg1 statml2 statml3"], ["cs.LG"])[0]
    by_label = {x.label: x for x in first}
    assert by_label["cs.LG"].name == "Machine Learning" and by_label["cs.LG"].archive == "cs"
    assert by_label["stat.ML"].archive == "stat"
    # a primary the head does not know comes first, without a probability
    unknown = head.suggest(["cslg0"], ["hep-th"])[0]
    assert unknown[0].label == "hep-th" and unknown[0].probability is None


def test_save_load_roundtrip_gives_identical_outputs(head: CrossListHead, tmp_path: Path) -> None:
    save_head(head, tmp_path / HEAD_DIR)
    loaded = load_cross_lists(tmp_path)
    assert loaded is not None and loaded.labels == head.labels
    texts, _ = papers(300, 7)
    assert np.array_equal(loaded.predict_proba(texts), head.predict_proba(texts))
    assert loaded.suggest(texts) == head.suggest(texts)
    assert np.array_equal(loaded.thresholds, head.thresholds)


def test_a_bundle_without_a_head_and_a_broken_head(head: CrossListHead, tmp_path: Path) -> None:
    assert load_cross_lists(tmp_path) is None
    d = save_head(head, tmp_path / HEAD_DIR)
    meta = json.loads((d / HEAD_FILE).read_text())
    (d / HEAD_FILE).write_text(json.dumps(meta | {"labels": meta["labels"][:2]}))
    with pytest.raises(ModelLoadError, match="do not match"):
        load_cross_lists(tmp_path)
    (d / WEIGHTS_FILE).write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_cross_lists(tmp_path)
    with pytest.raises(RuntimeError, match=r"not (trained|calibrated)"):
        CrossListHead(LABELS).predict_proba(["x"])


def test_a_head_sharing_the_primary_vectorizer_saves_none_and_refuses_another(
    tmp_path: Path,
) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    train, val, cal = papers(1500, 1), papers(1000, 2), papers(2000, 3)
    primary_vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)
    primary_vec.fit(train[0])
    cfg = CrossListConfig(precision=0.8, min_support=20, min_df=1, max_features=30)
    head = CrossListHead(LABELS, cfg).fit(train, val, cal, vectorizer=primary_vec)
    assert head.shared and head.columns is not None and len(head.columns) == 30
    texts, sets = papers(4000, 4)
    x = primary_vec.transform(texts)  # what serving computes once for both models
    assert np.array_equal(head.predict_proba_features(x), head.predict_proba(texts))
    assert _extra_precision(head, texts, sets) >= 0.8 - 0.05
    d = save_head(head, tmp_path / HEAD_DIR)
    assert not (d / "vectorizer.skops").exists()
    loaded = load_head(d, primary_vec)
    assert np.array_equal(loaded.predict_proba(texts), head.predict_proba(texts))
    other = TfidfVectorizer(dtype=np.float32).fit(val[0])
    with pytest.raises(ModelLoadError, match="another TF-IDF vectorizer"):
        load_head(d, other)
