"""Evaluation: known answers from fake models, a real TF-IDF run end to end, slices, calibration."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from paperops.data.datamodule import EmptySplitError, TextSplit, load_splits_for_model
from paperops.data.text import model_text
from paperops.evaluate.classifier import evaluate_classifier
from paperops.evaluate.config import BehaviouralConfig, EvalConfig
from paperops.evaluate.report import ARTIFACTS, artifact_paths
from paperops.evaluate.slices import (
    SLICE_MIN_ECE,
    length_bucket,
    length_bucket_names,
    slice_metrics,
    year_of,
)
from paperops.models.tfidf import TfidfClassifier, TfidfConfig
from paperops.uncertainty.calibrate import softmax
from paperops.uncertainty.calibration import Calibration, finite_logits, fit_calibration
from paperops.uncertainty.conformal import ConformalPredictor
from tests.conftest import CONFIG_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = BehaviouralConfig(n_examples=20)


# --- helpers: synthetic splits and a model whose logits the test controls -----------------------


def make_split(
    name: str,
    y: Sequence[int],
    labels: Sequence[str],
    *,
    start: int = 0,
    abstracts: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> TextSplit:
    """Papers titled "Paper q<i> ..." so TableModel can find row i whatever the edits."""
    n = len(y)
    idx = range(start, start + n)
    frame = pd.DataFrame(
        {
            "id": list(ids) if ids is not None else [f"2101.{i:05d}" for i in idx],
            "title": [f"Paper q{i} about things" for i in idx],
            "abstract": list(abstracts) if abstracts is not None else ["We study things."] * n,
            "label": [labels[c] for c in y],
            "primary_category": [labels[c] for c in y],
            "categories": [labels[c] for c in y],
            "update_date": ["2021-01-05"] * n,
            "line": list(idx),
        }
    )
    texts = [model_text(t, a) for t, a in zip(frame.title, frame.abstract, strict=True)]
    return TextSplit(name, frame, texts, np.asarray(y, dtype=np.int64))


class TableModel:
    """Logits looked up by the paper number in the title (case- and whitespace-proof)."""

    family = "table"

    def __init__(self, labels: Sequence[str], logits: np.ndarray) -> None:
        self.labels = list(labels)
        self.table = np.asarray(logits, dtype=np.float64)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        rows = [int(re.search(r"\bq(\d+)\b", t, re.IGNORECASE).group(1)) for t in texts]
        return self.table[rows]

    def save(self, directory: Path) -> Path:
        raise NotImplementedError


def table_splits(
    labels: Sequence[str], y_cal: np.ndarray, y_test: np.ndarray, logits: np.ndarray
) -> tuple[TableModel, dict[str, TextSplit]]:
    """Calibration rows are papers 0..n_cal-1, test rows the next ones; `logits` covers both."""
    cal = make_split("calibration", y_cal, labels)
    test = make_split("test", y_test, labels, start=len(y_cal))
    return TableModel(labels, logits), {"calibration": cal, "test": test}


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(len(probs))[:, None]
    return np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def run(model, splits, tmp_path: Path, **cfg) -> dict:
    config = EvalConfig(behavioural=FAST, **cfg)
    return evaluate_classifier(model, splits, tmp_path / "out", config, run_name="t")


# --- config -------------------------------------------------------------------------------------


def test_config_keys_are_the_yaml_contract() -> None:
    raw = yaml.safe_load((CONFIG_DIR / "evaluate" / "default.yaml").read_text())
    cfg = EvalConfig.from_config(raw)  # model_dir/report_dir are the caller's and are ignored
    assert cfg == EvalConfig()  # dataclass defaults are the shipped defaults
    assert set(raw) - {"model_dir", "report_dir"} == set(cfg.__dataclass_fields__)
    assert set(raw["behavioural"]) == set(cfg.behavioural.__dataclass_fields__)
    with pytest.raises(ValueError, match="unknown evaluate config keys"):
        EvalConfig.from_config({**raw, "alhpa": 0.2})
    with pytest.raises(ValueError, match="conformal_method"):
        EvalConfig(conformal_method="raps")
    with pytest.raises(ValueError, match="length_buckets"):
        EvalConfig(length_buckets=[150, 100])


# --- a real model end to end --------------------------------------------------------------------


@pytest.fixture
def tfidf_eval(prepared_dir: Path, tmp_path: Path) -> tuple[dict, Path, dict[str, TextSplit]]:
    splits, labels = load_splits_for_model(prepared_dir)
    train = splits["train"]
    model = TfidfClassifier(labels, TfidfConfig(min_df=1))
    model.fit(train.texts, [labels[i] for i in train.y])
    # 6 calibration papers: conformal needs alpha >= 1/7 for a finite quantile
    cfg = EvalConfig(alpha=0.2, behavioural=BehaviouralConfig(n_examples=50))
    out = tmp_path / "report"
    return evaluate_classifier(model, splits, out, cfg, run_name="tfidf-test"), out, splits


def test_tfidf_evaluation_writes_a_consistent_report(tfidf_eval) -> None:
    metrics, out, splits = tfidf_eval
    n = len(splits["test"])
    assert {p.name for p in out.iterdir()} == set(ARTIFACTS)  # no temp files left behind
    assert all(p.is_file() for p in artifact_paths(out, metrics))

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["run_name"] == "tfidf-test" and on_disk["model_family"] == "tfidf"
    assert on_disk["n_test"] == n and on_disk["labels"] == ["astro-ph", "cs", "hep-th", "math"]

    cm = np.array(metrics["confusion_matrix"])
    assert sum(r["support"] for r in metrics["per_class"]) == n == cm.sum()
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert metrics["accuracy"] <= metrics["top3_accuracy"] <= 1
    assert 0 <= metrics["conformal"]["coverage"] <= 1
    assert sum(metrics["conformal"]["set_size_histogram"].values()) == n
    for rows in metrics["slices"].values():
        assert sum(r["n"] for r in rows) == n
    assert set(metrics["slices"]) == {"archive", "abstract_length", "year"}
    assert {r["value"] for r in metrics["slices"]["year"]} <= {"2020", "2021", "2022"}

    report = (out / "report.md").read_text()
    for label in metrics["labels"]:
        assert label in report
    for heading in ("## Headline", "## Calibration", "## Conformal", "## Slices", "## Behavioural"):
        assert heading in report
    assert "(confusion_matrix.png)" in report and "(reliability.png)" in report
    for png in ("confusion_matrix.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC

    csv = pd.read_csv(out / "per_class.csv")
    assert list(csv.columns) == ["label", "name", "precision", "recall", "f1", "support"]
    assert csv["support"].sum() == n

    beh = metrics["behavioural"]
    assert set(beh["invariance"]) == {"whitespace", "lowercase_title", "titlecase_title", "typos"}
    assert beh["n_examples"] == n  # capped at the split's size
    assert beh["directional"]["n"] == n
    for check in ("whitespace", "lowercase_title"):  # tfidf lower-cases and tokenises
        assert beh["invariance"][check]["pass_rate"] == 1


def test_saved_calibration_reproduces_the_evaluation(tfidf_eval) -> None:
    metrics, out, _ = tfidf_eval
    cal = Calibration.load(out / "calibration.json")
    assert cal.to_dict() == metrics["calibration"]
    assert cal.temperature.temperature == metrics["temperature"]
    model_logits = np.log(np.full((1, 4), 0.25))  # any logits: the record alone is enough
    probs, sets = cal.apply(model_logits)
    assert probs.shape == (1, 4) and len(sets) == 1 and sets[0]


# --- known answers ------------------------------------------------------------------------------


def test_perfect_logits_score_perfectly(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    y = np.array([0, 1, 2] * 10)
    model, splits = table_splits(labels, y, y, 10 * np.eye(3)[np.concatenate([y, y])])
    m = run(
        model,
        splits,
        tmp_path,
        alpha=0.2,
        conformal_randomized=False,
        conformal_allow_empty=False,
    )
    assert m["accuracy"] == 1 and m["macro_f1"] == 1 and m["weighted_f1"] == 1
    assert m["top3_accuracy"] == 1
    cm = np.array(m["confusion_matrix"])
    assert (cm == np.diag([10, 10, 10])).all()
    assert all(r["precision"] == r["recall"] == r["f1"] == 1 for r in m["per_class"])
    assert m["conformal"]["coverage"] == 1 and m["conformal"]["mean_set_size"] == 1
    beh = m["behavioural"]["invariance"]
    assert all(r["pass_rate"] == 1 for r in beh.values())


def test_always_predicting_class_zero_gives_known_numbers(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    model, splits = table_splits(labels, y, y, np.tile([2.0, 1.0, 0.0], (20, 1)))
    m = run(model, splits, tmp_path, alpha=0.25, top_k=2)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["top2_accuracy"] == pytest.approx(0.8)  # a or b always in the top two
    a, b, c = m["per_class"]
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((0.5, 1, 2 / 3, 5))
    assert (b["f1"], b["support"], c["f1"], c["support"]) == (0, 3, 0, 2)
    assert m["macro_f1"] == pytest.approx((2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((2 / 3) * 5 / 10)
    assert np.array(m["confusion_matrix"]).tolist() == [[5, 0, 0], [3, 0, 0], [2, 0, 0]]
    assert [r["name"] for r in m["per_class"]] == labels  # no taxonomy name: the label itself


def test_temperature_scaling_fixes_overconfidence(tmp_path: Path) -> None:
    """Labels drawn from softmax(z), the model reports 3z: T ~ 3 and ECE/NLL drop on test."""
    rng = np.random.default_rng(0)
    k, n = 5, 2000
    z = rng.normal(0, 1.5, (2 * n, k))
    y = sample_labels(softmax(z), rng)
    model, splits = table_splits([f"c{i}" for i in range(k)], y[:n], y[n:], 3 * z)
    m = run(model, splits, tmp_path)
    assert m["temperature"] == pytest.approx(3, rel=0.15)
    assert m["ece_after"] < m["ece_before"] / 2
    assert m["nll_after"] < m["nll_before"]
    assert m["accuracy"] == pytest.approx((z[n:].argmax(1) == y[n:]).mean())  # argmax unchanged


def _coverage_bounds(n_cal: int, n_test: int, alpha: float, sds: float) -> tuple[float, float]:
    """Split conformal: given the calibration draw, coverage ~ Beta(n+1-l, l), l=floor((n+1)a);
    its mean is in [1-a, 1-a+1/(n+1)]. Add the test split's binomial noise and allow `sds`."""
    l_ = math.floor((n_cal + 1) * alpha)
    a, b = n_cal + 1 - l_, l_
    var = a * b / ((a + b) ** 2 * (a + b + 1)) + alpha * (1 - alpha) / n_test
    return 1 - alpha - sds * math.sqrt(var), 1 - alpha + 1 / (n_cal + 1) + sds * math.sqrt(var)


def _dirichlet_task(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    probs = rng.dirichlet(np.full(k, 0.5), n)
    return np.log(probs), sample_labels(probs, rng)


def test_conformal_coverage_matches_finite_sample_theory() -> None:
    """LAC on exchangeable draws: one run within 4 sd, and the mean over 40 calibration draws
    inside the theoretical [1-a, 1-a+1/(n+1)] up to Monte-Carlo error."""
    alpha, k, n_cal, n_test = 0.1, 8, 500, 4000
    cfg = EvalConfig(alpha=alpha, conformal_method="lac")
    lo, hi = _coverage_bounds(n_cal, n_test, alpha, sds=4)
    coverages = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        logits, y = _dirichlet_task(n_cal + n_test, k, rng)
        cal = fit_calibration(logits[:n_cal], y[:n_cal], cfg)
        _, sets = cal.apply(logits[n_cal:])
        cov = np.mean([t in s for t, s in zip(y[n_cal:].tolist(), sets, strict=True)])
        assert lo <= cov <= hi
        coverages.append(cov)
    lo1, hi1 = _coverage_bounds(n_cal, n_test, alpha, sds=0)
    se = np.std(coverages, ddof=1) / math.sqrt(len(coverages))
    assert lo1 - 3 * se <= np.mean(coverages) <= hi1 + 3 * se


def test_aps_coverage_in_the_report_is_valid(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n_cal, n_test = 1000, 2000
    logits, y = _dirichlet_task(n_cal + n_test, 6, rng)
    model, splits = table_splits([f"c{i}" for i in range(6)], y[:n_cal], y[n_cal:], logits)
    m = run(model, splits, tmp_path, alpha=0.1, conformal_method="aps")
    conf = m["conformal"]
    assert conf["n_cal"] == n_cal and conf["target"] == pytest.approx(0.9)
    # deterministic APS ties scores at 0 (true class on top), so it may over-cover: lower bound only
    assert conf["coverage"] >= _coverage_bounds(n_cal, n_test, 0.1, sds=4)[0]
    assert 0 < conf["mean_set_size"] <= 6
    sizes = {int(s): c for s, c in conf["set_size_histogram"].items()}
    assert sum(sizes.values()) == n_test
    assert sum(s * c for s, c in sizes.items()) / n_test == pytest.approx(conf["mean_set_size"])


def test_an_accurate_model_covers_exactly_only_with_empty_sets(tmp_path: Path) -> None:
    """A 97%-accurate model: sets that always hold the top-1 class cover >= 0.97, far above a 90%
    target; randomized APS with empty sets allowed lands on the target (the shipped default)."""
    rng = np.random.default_rng(7)
    n_cal, n_test, k = 2000, 4000, 5
    y = rng.integers(0, k, n_cal + n_test)
    logits = rng.normal(0, 1, (n_cal + n_test, k))
    logits[np.arange(len(y)), y] += 6.0
    model, splits = table_splits([f"c{i}" for i in range(k)], y[:n_cal], y[n_cal:], logits)
    exact = run(model, splits, tmp_path / "exact", alpha=0.1)["conformal"]
    never_empty = run(model, splits, tmp_path / "ne", alpha=0.1, conformal_allow_empty=False)[
        "conformal"
    ]
    lo, hi = _coverage_bounds(n_cal, n_test, 0.1, sds=4)
    assert lo <= exact["coverage"] <= hi and exact["empty_fraction"] > 0
    assert never_empty["coverage"] > hi and never_empty["empty_fraction"] == 0


# --- calibration record, -inf logits, errors ----------------------------------------------------


def test_calibration_round_trips_through_json() -> None:
    rng = np.random.default_rng(0)
    logits, y = _dirichlet_task(300, 4, rng)
    cal = fit_calibration(3 * logits, y, EvalConfig())
    # conformal is fitted on the temperature-scaled probabilities, not the raw ones
    assert cal.temperature.temperature == pytest.approx(3, rel=0.3)
    shipped = {"randomized": True, "allow_empty": True}
    scaled = ConformalPredictor("aps", 0.1, **shipped).fit(cal.temperature.transform(3 * logits), y)
    assert cal.conformal.qhat == scaled.qhat
    raw = ConformalPredictor("aps", 0.1, **shipped).fit(softmax(3 * logits), y)
    assert cal.conformal.qhat != raw.qhat
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    p1, s1 = cal.apply(logits)
    p2, s2 = again.apply(logits)
    np.testing.assert_array_equal(p1, p2)
    assert s1 == s2
    assert cal.to_dict()["conformal"]["method"] == "aps"
    with pytest.raises(ValueError, match="not a calibration"):
        Calibration.from_dict({**cal.to_dict(), "kind": "temperature"})


def test_minus_inf_logits_do_not_break_anything(tmp_path: Path) -> None:
    """A class the model never saw (tfidf gives -inf) gets probability ~0, metrics stay finite,
    and calibration rows of that class do not drag the temperature to its bound."""
    labels = ["a", "b", "c"]
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    logits = 2 * np.eye(3)[y] + rng.normal(0, 1, (120, 3))
    logits[:, 2] = -np.inf
    model, splits = table_splits(labels, y[:60], y[60:], logits[:120])
    m = run(model, splits, tmp_path, alpha=0.2)
    for key in ("ece_before", "ece_after", "nll_before", "nll_after", "temperature"):
        assert math.isfinite(m[key])
    assert 0.1 < m["temperature"] < 19
    assert m["per_class"][2]["recall"] == 0 and m["n_unreachable_test"] == int((y[60:] == 2).sum())
    json.loads((tmp_path / "out" / "metrics.json").read_text())  # strict JSON, no NaN/Infinity
    probs = finite_logits(logits[:2])
    assert np.isfinite(probs).all() and (softmax(probs)[:, 2] < 1e-15).all()


def test_finite_logits_rejects_real_model_bugs() -> None:
    with pytest.raises(ValueError, match="NaN"):
        finite_logits([[0.0, np.nan]])
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        finite_logits([[0.0, np.inf]])
    with pytest.raises(ValueError, match="entirely -inf"):
        finite_logits([[-np.inf, -np.inf], [0.0, 1.0]])


def test_missing_or_empty_splits_are_named(tmp_path: Path) -> None:
    labels = ["a", "b"]
    y = np.array([0, 1] * 10)
    model, splits = table_splits(labels, y, y, np.zeros((40, 2)))
    for name in ("calibration", "test"):
        with pytest.raises(ValueError, match=f"needs the '{name}' split"):
            run(model, {k: v for k, v in splits.items() if k != name}, tmp_path)
        empty = make_split(name, [], labels)
        with pytest.raises(EmptySplitError, match=f"'{name}' split is empty"):
            run(model, {**splits, name: empty}, tmp_path)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_too_small_calibration_and_bad_logit_shapes_are_explained(tmp_path: Path) -> None:
    labels = ["a", "b"]
    y = np.array([0, 1] * 3)
    model, splits = table_splits(labels, y, y, np.zeros((12, 2)))
    with pytest.raises(ValueError, match="calibration split is too small"):
        run(model, splits, tmp_path, alpha=0.1)
    model.table = np.zeros((12, 3))
    with pytest.raises(ValueError, match="expected \\(6, 2\\)"):
        run(model, splits, tmp_path, alpha=0.3)


def test_a_model_with_another_label_order_is_refused(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    y = np.array([0, 1, 2] * 4)
    model, splits = table_splits(labels, y, y, np.eye(3)[np.concatenate([y, y])])
    model.labels = ["b", "a", "c"]  # same set, another order: y would index the wrong columns
    with pytest.raises(ValueError, match="label order"):
        run(model, splits, tmp_path, alpha=0.25)


# --- slices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arxiv_id", "update_date", "year"),
    [
        ("2101.00001", None, 2021),
        ("0704.0001", None, 2007),
        ("704.0001", None, 2007),  # Kaggle dumps that lost the leading zero
        ("1912.12345v2", "2023-01-01", 2019),  # the id wins over the last revision date
        ("hep-th/9901001", None, 1999),
        ("math.AG/0601001", None, 2006),
        ("cond-mat/0012345v3", None, 2000),
        ("not-an-id", "2015-03-02", 2015),
        ("not-an-id", pd.Timestamp("2012-05-01"), 2012),
        ("2113.00001", "2019-01-01", 2019),  # month 13 is no month: fall back
        (None, None, None),
    ],
)
def test_year_from_new_and_old_style_ids(arxiv_id, update_date, year) -> None:
    assert year_of(arxiv_id, update_date) == year


def test_length_bucket_edges() -> None:
    edges = [100, 150, 200]
    assert length_bucket_names(edges) == ["<100", "100-149", "150-199", ">=200"]
    got = {w: length_bucket(w, edges) for w in (0, 99, 100, 149, 150, 199, 200, 5000)}
    assert got == {
        0: "<100",
        99: "<100",
        100: "100-149",
        149: "100-149",
        150: "150-199",
        199: "150-199",
        200: ">=200",
        5000: ">=200",
    }


def test_slices_partition_the_test_split() -> None:
    labels = ["cs.LG", "cs.AI", "math.AG"]
    n = 120
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    abstracts = [" ".join(["w"] * int(rng.integers(50, 250))) for _ in range(n)]
    ids = [
        f"{rng.choice(['1501', '2101'])}.{i:05d}" if i % 4 else f"hep-th/9901{i:03d}"
        for i in range(n)
    ]
    split = make_split("test", y, labels, abstracts=abstracts, ids=ids)
    probs = softmax(rng.normal(0, 2, (n, 3)))
    s = slice_metrics(split.frame, probs, y, labels, EvalConfig())
    for rows in s.values():
        assert sum(r["n"] for r in rows) == n
    archives = {r["value"]: r for r in s["archive"]}
    assert set(archives) == {"cs", "math"}  # category labels roll up to their archive
    assert archives["cs"]["n"] == int((y < 2).sum())
    assert [r["value"] for r in s["abstract_length"]] == ["<100", "100-149", "150-199", ">=200"]
    assert {r["value"] for r in s["year"]} == {"1999", "2015", "2021"}
    for rows in s.values():
        for r in rows:
            if r["n"]:
                assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1
                assert (r["ece"] is None) == (r["n"] < SLICE_MIN_ECE)
