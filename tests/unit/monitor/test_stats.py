"""The drift statistics and the checks built on them, on samples whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paperops.monitor import stats
from paperops.monitor.checks import check_accuracy, check_label, check_length
from paperops.monitor.config import CHECKS, DriftConfig, DriftError, Reference, Window, parse_window
from paperops.monitor.drift import compute
from paperops.monitor.stats import words

THRESHOLDS = {"length": 0.1, "vocabulary": 0.05, "embedding": 0.7, "label": 0.2, "accuracy": 0.1}


def _cfg(**kw: object) -> DriftConfig:
    base = {"request_log": "sqlite:///x.db", "thresholds": THRESHOLDS, "embedding_method": "lsa"}
    return DriftConfig(**(base | kw))  # type: ignore[arg-type]


# --- statistics ----------------------------------------------------------------------------


def test_psi_is_near_zero_for_one_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(1000, 200, 5000)
    assert stats.psi(ref, rng.normal(1000, 200, 2000)) < 0.02
    assert stats.psi(ref, rng.normal(1400, 200, 2000)) > 0.5
    with pytest.raises(ValueError, match="non-empty"):
        stats.psi(ref, np.array([]))


def test_categorical_psi_and_chi_square() -> None:
    ref = {"cs": 0.5, "math": 0.3, "physics": 0.2}
    assert stats.categorical_psi(ref, {"cs": 50, "math": 30, "physics": 20}) == pytest.approx(0)
    assert stats.categorical_psi(ref, {"cs": 5, "math": 5, "physics": 90}) > 1
    _, p_same = stats.chi_square(ref, {"cs": 500, "math": 300, "physics": 200})
    _, p_shift = stats.chi_square(ref, {"cs": 200, "math": 300, "physics": 500})
    assert p_same > 0.5 and p_shift < 1e-10
    # a label the reference never had is a huge statistic, not a division by zero
    stat_new, p_new = stats.chi_square(ref, {"cs": 50, "bio": 50})
    assert np.isfinite(stat_new) and p_new < 1e-10


def test_js_divergence_bounds() -> None:
    assert stats.js_divergence({"a": 2, "b": 2}, {"a": 1, "b": 1}) == pytest.approx(0)
    assert stats.js_divergence({"a": 1}, {"b": 1}) == pytest.approx(1)
    with pytest.raises(ValueError):
        stats.js_divergence({"a": 0}, {"a": 1})


def test_domain_auc_and_mmd_separate_only_shifted_samples() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (400, 8))
    same = rng.normal(0, 1, (300, 8))
    shifted = rng.normal(0, 1, (300, 8)) + np.r_[1.0, np.zeros(7)]
    assert stats.domain_auc(ref, same) < 0.6
    assert stats.domain_auc(ref, shifted) > 0.7
    _, p_same = stats.mmd_rbf(ref, same, permutations=50)
    _, p_shift = stats.mmd_rbf(ref, shifted, permutations=50)
    assert p_same > 0.05 and p_shift < 0.05
    with pytest.raises(ValueError, match="at least"):
        stats.domain_auc(ref, same[:3])


def test_words_are_lowercased_and_skip_single_characters() -> None:
    assert words("A Study of X-ray Spectra, 2 GeV") == ["study", "of", "x-ray", "spectra", "gev"]


# --- windows and config --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "seconds"), [("30m", 1800), ("24h", 86400), ("7d", 604800), ("2w", 1209600),
                          ("90", 90), ("1.5h", 5400)],
)  # fmt: skip
def test_parse_window(spec: str, seconds: float) -> None:
    since, until = parse_window(spec, now=1_000_000.0)
    assert until == 1_000_000.0 and until - since == pytest.approx(seconds)


@pytest.mark.parametrize("spec", ["", "yesterday", "-5m", "0h", "5y"])
def test_bad_window_names_the_setting(spec: str) -> None:
    with pytest.raises(DriftError, match=r"monitor.window"):
        parse_window(spec, now=0.0)


def test_all_window_has_no_start() -> None:
    assert parse_window("all", now=5.0) == (None, 5.0)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(DriftError, match="request_log"):
        _cfg(request_log="")
    with pytest.raises(DriftError, match="missing"):
        _cfg(thresholds={"length": 0.1})
    with pytest.raises(DriftError, match=r"thresholds.colour"):
        _cfg(thresholds=THRESHOLDS | {"colour": 1.0})
    with pytest.raises(DriftError, match=r"embedding.method"):
        _cfg(embedding_method="bert")
    with pytest.raises(DriftError, match=r"null.quantile"):
        _cfg(null_quantile=1.5)


def test_the_shipped_config_builds() -> None:
    from paperops.config import load_config

    cfg = DriftConfig.from_config(load_config([]).monitor)
    assert set(cfg.thresholds) == set(CHECKS) and cfg.embedding_method == "encoder"
    assert cfg.request_log.startswith("sqlite:///")


# --- checks on synthetic references --------------------------------------------------------


def _reference(n: int = 600, seed: int = 0) -> Reference:
    rng = np.random.default_rng(seed)
    vocab = ["graph", "network", "learning", "model", "data", "training", "loss", "layer"]

    def texts(k: int) -> list[str]:
        return [" ".join(rng.choice(vocab, 30)) for _ in range(k)]

    return Reference(
        texts=texts(n), chars=rng.normal(1000, 150, n), null_texts=texts(n // 2),
        null_chars=rng.normal(1000, 150, n // 2), label_share={"cs": 0.6, "math": 0.4},
        rows=n, source="synthetic",
    )  # fmt: skip


LABELS = ("cs", "cs", "cs", "math", "math")


def _rows(
    n: int,
    *,
    chars: float = 1000,
    labels: tuple[str, ...] = LABELS,
    text: str | None = "learning graph model",
    seed: int = 1,
) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"title": None if text is None else "t", "abstract": text, "label": labels[i % len(labels)],
         "confidence": 0.9, "text_chars": float(rng.normal(chars, 150)), "model_version": "1",
         "ts": float(i), "feedback_label": None}
        for i in range(n)
    ]  # fmt: skip


def test_small_windows_raise_the_threshold_to_the_noise_floor() -> None:
    ref = _reference()
    small = check_label(_cfg(), ref, Window(_rows(12), None, 0.0, "all"))
    large = check_label(_cfg(), ref, Window(_rows(2000), None, 0.0, "all"))
    assert small["threshold"] >= large["threshold"] >= THRESHOLDS["label"]
    assert small["null_quantile"] > large["null_quantile"]
    assert small["configured_threshold"] == THRESHOLDS["label"]


def test_length_check_flags_longer_papers_only() -> None:
    ref = _reference()
    same = check_length(_cfg(), ref, Window(_rows(1000), None, 0.0, "all"))
    longer = check_length(_cfg(), ref, Window(_rows(300, chars=1600), None, 0.0, "all"))
    assert not same["drifted"] and longer["drifted"]
    assert longer["window_median"] > longer["reference_median"]


def test_label_check_reports_the_mix_and_new_labels() -> None:
    shifted = check_label(
        _cfg(), _reference(), Window(_rows(300, labels=("math", "bio")), None, 0.0, "all")
    )
    assert shifted["drifted"] and shifted["unknown_labels"] == ["bio"]
    by_label = {r["label"]: r for r in shifted["labels"]}
    assert by_label["cs"]["window"] == 0 and by_label["cs"]["reference"] == 0.6


def test_accuracy_check_needs_feedback_then_compares_with_the_confidence() -> None:
    rows = _rows(100)
    skipped = check_accuracy(_cfg(), Window(rows, None, 0.0, "all"))
    assert skipped["score"] is None and "min_feedback" in skipped["reason"]
    for i, r in enumerate(rows):  # 50% right while the model claimed 90%
        r["feedback_label"] = r["label"] if i % 2 else "other"
    checked = check_accuracy(_cfg(), Window(rows, None, 0.0, "all"))
    assert checked["live_accuracy"] == 0.5 and checked["expected_accuracy"] == 0.9
    assert checked["score"] == pytest.approx(0.4) and checked["drifted"]
    lo, hi = checked["live_accuracy_95ci"]
    assert lo < 0.5 < hi


def test_too_few_papers_is_insufficient_data_not_drift() -> None:
    report = compute(_cfg(min_papers=50), _reference(), Window(_rows(10), None, 0.0, "all"))
    assert report["status"] == "insufficient_data" and not report["drifted"]
    assert all(c["score"] is None for c in report["checks"].values())


def test_a_log_without_text_still_checks_length_and_labels() -> None:
    report = compute(_cfg(min_papers=10), _reference(), Window(_rows(200, text=None), None, 0.0,
                                                               "all"))  # fmt: skip
    checks = report["checks"]
    assert checks["vocabulary"]["score"] is None and "store_text" in checks["vocabulary"]["reason"]
    assert checks["embedding"]["score"] is None
    assert checks["length"]["score"] is not None and checks["label"]["score"] is not None


def test_reference_sample_and_null_pool_are_disjoint(tmp_path: object) -> None:
    from pathlib import Path

    from paperops.monitor.drift import load_reference

    d = Path(str(tmp_path))
    df = pd.DataFrame({"title": [f"title {i}" for i in range(90)],
                       "abstract": [f"abstract number {i} " * 3 for i in range(90)],
                       "label": ["cs", "math", "cs"] * 30})  # fmt: skip
    df.to_parquet(d / "train.parquet")
    ref = load_reference(_cfg(processed_dir=str(d), reference_max_papers=50, null_papers=40))
    assert len(ref.null_texts) == 30 and len(ref.texts) == 50  # a third stays the null pool
    assert not set(ref.texts) & set(ref.null_texts)
    assert ref.label_share == pytest.approx({"cs": 2 / 3, "math": 1 / 3})
    with pytest.raises(DriftError, match="paperops data prepare"):
        load_reference(_cfg(processed_dir=str(d / "missing")))
