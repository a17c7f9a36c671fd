"""Per-label precision thresholds and Platt scaling, on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from paperops.uncertainty.label_thresholds import (
    NEVER,
    OWN,
    POOLED,
    fit_platt,
    fit_thresholds,
    platt_probabilities,
    precision_threshold,
)


def _uniform(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores u ~ U(0, 1), labels y ~ Bernoulli(u): the items with u >= t have precision
    (1 + t) / 2, so the threshold for precision P is exactly 2P - 1."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    return u, rng.random(n) < u


@pytest.mark.parametrize("precision", [0.6, 0.75, 0.9])
def test_threshold_is_the_known_answer_and_holds_on_fresh_data(precision: float) -> None:
    u, y = _uniform(200_000, seed=1)
    t = precision_threshold(u, y, precision)
    assert t == pytest.approx(2 * precision - 1, abs=0.01)
    fresh_u, fresh_y = _uniform(200_000, seed=2)
    assert fresh_y[fresh_u >= t].mean() == pytest.approx(precision, abs=0.01)
    # and a threshold 0.1 lower no longer holds: the check can fail
    assert fresh_y[fresh_u >= t - 0.1].mean() < precision - 0.02


def test_threshold_is_the_lowest_that_reaches_precision() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    # precision at each cut: 1, .5, .67, .75, .6, .5
    assert precision_threshold(p, y, 0.7) == 0.6
    assert precision_threshold(p, y, 0.6) == 0.5
    assert precision_threshold(p, y, 0.99) == 0.9
    assert precision_threshold(p, np.zeros(6, dtype=bool), 0.5) == np.inf


def test_ties_are_taken_together() -> None:
    p = np.array([0.9, 0.5, 0.5, 0.5])
    y = np.array([1, 1, 0, 0], dtype=bool)
    # a threshold of 0.5 takes all three tied items: precision 0.5, not 1 (first two)
    assert precision_threshold(p, y, 0.6) == 0.9


def test_rare_labels_share_a_pooled_threshold_and_unseen_labels_are_never_suggested() -> None:
    u, y = _uniform(20_000, seed=3)
    few = np.arange(len(u)) < 60  # the third label: 60 scored papers, ~30 positives (u > .5)
    probs = np.stack([u, u, np.where(few, u, 0.0)], axis=1)
    labels = np.stack([y, np.zeros_like(y), few & (u > 0.5)], axis=1)
    chosen = fit_thresholds(probs, labels, precision=0.8, min_support=50)
    assert chosen.sources == [OWN, NEVER, POOLED]
    assert chosen.thresholds[0] == pytest.approx(0.6, abs=0.02)
    assert chosen.thresholds[1] == np.inf
    assert 0.3 < chosen.thresholds[2] < 1.0
    assert labels[probs[:, 2] >= chosen.thresholds[2], 2].mean() >= 0.8
    with pytest.raises(ValueError, match="precision"):
        fit_thresholds(probs, labels, precision=1.0, min_support=5)


def test_platt_recovers_a_known_sigmoid() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=50_000)
    y = rng.random(50_000) < 1 / (1 + np.exp(-(2.0 * s - 1.0)))
    a, b = fit_platt(s, y)
    assert (a, b) == (pytest.approx(2.0, abs=0.1), pytest.approx(-1.0, abs=0.1))
    p = platt_probabilities(s[:, None], np.array([a]), np.array([b]))
    assert p.shape == (50_000, 1) and 0 < p.min() < p.max() < 1


def test_platt_on_separable_data_stays_finite() -> None:
    s = np.r_[np.full(20, -3.0), np.full(20, 3.0)]
    a, b = fit_platt(s, s > 0)
    assert np.isfinite([a, b]).all() and a > 0
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(s, np.ones(40, dtype=bool))
