"""Temperature scaling and calibration metrics on synthetic data with a known answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paperops.uncertainty.calibrate import (
    TemperatureScaler,
    expected_calibration_error,
    fit_temperature,
    logits_from_probs,
    nll,
    plot_reliability,
    reliability_table,
    softmax,
)

K = 15


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's probabilities: the model is calibrated by design."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), probs.shape[1] - 1)


@pytest.fixture(scope="module")
def overconfident() -> tuple[np.ndarray, np.ndarray]:
    """Logits 3x too sharp: labels come from softmax(z) but the model reports 3z."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (20_000, K))
    return 3 * z, sample_labels(softmax(z), rng)


def test_softmax_is_stable_for_huge_logits() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [1e300, 1e300, -1e300]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[1, 0, 0], [0.5, 0.5, 0]])
    z = np.random.default_rng(1).normal(size=(4, K))
    np.testing.assert_allclose(softmax(z + 1e4), softmax(z))  # shift invariant
    np.testing.assert_allclose(softmax(z, 2.0), softmax(z / 2))
    np.testing.assert_allclose(softmax(z).sum(axis=1), 1)


def test_fit_temperature_recovers_known_overconfidence(overconfident) -> None:
    logits, labels = overconfident
    t = fit_temperature(logits, labels)
    assert 1 / t == pytest.approx(1 / 3, rel=0.10)
    assert nll(logits, labels, t) < nll(logits, labels)


def test_scaling_reduces_ece(overconfident) -> None:
    logits, labels = overconfident
    scaler = TemperatureScaler().fit(logits, labels)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(scaler.transform(logits), labels)
    assert before > 0.2
    assert after < 0.03
    assert after < before / 5


def test_probabilities_only_model_via_log_probs(overconfident) -> None:
    """A predict_proba-only model: log-probabilities stand in for logits (power scaling)."""
    logits, labels = overconfident
    t = fit_temperature(logits_from_probs(softmax(logits)), labels)
    assert t == pytest.approx(3, rel=0.10)


def test_ece_of_calibrated_data_is_small() -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(K, 0.3), 20_000)
    labels = sample_labels(probs, rng)
    assert expected_calibration_error(probs, labels) < 0.02
    shuffled = rng.permutation(labels)  # same marginals, but the labels no longer follow probs
    assert expected_calibration_error(probs, shuffled) > 0.2


def test_reliability_table_and_ece_agree() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(K, 0.3), 5000)
    labels = sample_labels(probs, rng)
    table = reliability_table(probs, labels, n_bins=10)
    json.dumps(table)  # JSON-able, empty bins included
    assert len(table) == 10
    assert sum(r["count"] for r in table) == len(labels)
    assert table[0]["lower"] == 0 and table[-1]["upper"] == 1
    full = [r for r in table if r["count"]]
    assert all(r["lower"] < r["mean_confidence"] <= r["upper"] for r in full)
    ece = sum(r["count"] * abs(r["accuracy"] - r["mean_confidence"]) for r in full) / len(labels)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(ece)


def test_ece_hand_computed() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right); bins of 0.25: 0.6 and the 0.9s split
    # ECE = 1/3 * |1 - 0.6| + 2/3 * |0.5 - 0.9|
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.4)
    # one bin pools them: |2/3 - 0.8|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.8 - 2 / 3)


def test_bins_are_closed_on_the_right() -> None:
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.7, 0.3]])
    table = reliability_table(probs, np.array([0, 0, 0]), n_bins=2)
    assert [r["count"] for r in table] == [1, 2]  # 0.5 is in (0, 0.5], 1.0 in (0.5, 1]


def test_plot_reliability_writes_png_atomically(tmp_path: Path, overconfident) -> None:
    logits, labels = overconfident
    path = tmp_path / "plots" / "reliability.png"
    out = plot_reliability(softmax(logits), softmax(logits, 3.0), labels, path)
    assert out == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
    assert [p.name for p in path.parent.iterdir()] == ["reliability.png"]  # no temp left behind


def test_scaler_round_trip(overconfident) -> None:
    logits, labels = overconfident
    scaler = TemperatureScaler().fit(logits[:2000], labels[:2000])
    back = TemperatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert back == scaler
    np.testing.assert_array_equal(back.transform(logits[:10]), scaler.transform(logits[:10]))
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler.from_dict({"temperature": -1.0})
    with pytest.raises(ValueError, match="kind"):
        TemperatureScaler.from_dict({"kind": "isotonic", "temperature": 1.0})


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (np.zeros((3, 4)), np.array([0, 1]), "labels must have shape"),
        (np.zeros((3, 4)), np.array([0, 1, 4]), r"labels must be in \[0, 4\)"),
        (np.zeros((3, 4)), np.array([0, -1, 2]), r"labels must be in \[0, 4\)"),
        (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), "labels must be integer"),
        (np.zeros((0, 4)), np.array([], dtype=int), "logits must have shape"),
        (np.zeros(4), np.array([0]), "logits must have shape"),
        (np.array([[0.0, np.nan]]), np.array([0]), "logits must be finite"),
        (np.array([[0.0, np.inf]]), np.array([0]), "logits must be finite"),
    ],
)
def test_fit_temperature_validates_inputs(logits, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels)


def test_metric_and_bound_validation() -> None:
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(np.zeros((2, 3)), labels, bounds=(0.0, 5.0))
    with pytest.raises(ValueError, match="probs rows must sum to 1"):
        expected_calibration_error(np.array([[0.5, 0.4], [0.5, 0.5]]), labels)
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\]"):
        reliability_table(np.array([[1.5, -0.5], [0.5, 0.5]]), labels)
    with pytest.raises(ValueError, match="n_bins"):
        reliability_table(np.array([[0.5, 0.5], [0.5, 0.5]]), labels, n_bins=0)
