"""Split conformal sets on synthetic data where the answer is known.

Probabilities come from a Dirichlet and each label is drawn from its row's probabilities, so the
"model" is calibrated and calibration and test rows are exchangeable: coverage must hit 1 - alpha.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from paperops.uncertainty.conformal import ConformalPredictor, min_calibration_size

K = 15
METHODS = ["lac", "aps"]


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    probs = rng.dirichlet(np.full(K, 0.3), n)
    u = rng.random(n)[:, None]
    return probs, np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), K - 1)


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """5000 calibration rows, 5000 test rows."""
    probs, labels = sample(10_000, np.random.default_rng(1))
    return probs[:5000], labels[:5000], probs[5000:], labels[5000:]


@pytest.mark.parametrize("randomized", [False, True])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_coverage_hits_target(split, method: str, alpha: float, randomized: bool) -> None:
    # One run: sd of the coverage is ~sqrt(2 alpha (1 - alpha) / 5000), <= 0.008 here.
    p_cal, y_cal, p_test, y_test = split
    cp = ConformalPredictor(method, alpha, randomized=randomized).fit(p_cal, y_cal)
    res = cp.evaluate(p_test, y_test)
    assert res["target"] == pytest.approx(1 - alpha)
    assert 1 - alpha - 0.02 <= res["coverage"] <= 1 - alpha + 0.03
    assert 1 < res["mean_set_size"] < K


@pytest.mark.parametrize("method", METHODS)
def test_mean_coverage_over_seeds_matches_finite_sample_theory(method: str) -> None:
    """With n=19 and alpha=0.1 the finite-sample rank shows: E[coverage] = 18/20 exactly.

    An off-by-one in the quantile rank would move it to 0.85 or 0.95 (numpy's method="higher"
    at level ceil((n+1)(1-alpha))/n is one such rank up), so the mean over 500 seeds can tell.
    """
    n, m, alpha, seeds = 19, 200, 0.1, 500
    rng = np.random.default_rng(7)
    cov = []
    for _ in range(seeds):
        probs, labels = sample(n + m, rng)
        cp = ConformalPredictor(method, alpha).fit(probs[:n], labels[:n])
        cov.append(cp.evaluate(probs[n:], labels[n:])["coverage"])
    mean, slack = float(np.mean(cov)), 0.01  # sd of the mean ~0.003
    assert mean == pytest.approx(math.ceil((n + 1) * (1 - alpha)) / (n + 1), abs=slack)
    assert 1 - alpha - slack <= mean <= 1 - alpha + 1 / (n + 1) + slack


@pytest.mark.parametrize("randomized", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_perfect_model_gives_singletons(method: str, randomized: bool) -> None:
    labels = np.random.default_rng(3).integers(0, K, 500)
    probs = np.eye(K)[labels]
    cp = ConformalPredictor(method, 0.1, randomized=randomized).fit(probs[:250], labels[:250])
    assert cp.predict_sets(probs[250:]) == [[y] for y in labels[250:].tolist()]
    res = cp.evaluate(probs[250:], labels[250:])
    assert (res["coverage"], res["mean_set_size"], res["target"]) == (1.0, 1.0, 0.9)
    assert res["min_class_coverage"] == 1.0 and set(res["per_class_coverage"]) == {1.0}


@pytest.mark.parametrize("method", METHODS)
def test_sets_never_empty_and_sorted_by_probability(split, method: str) -> None:
    p_cal, y_cal, p_test, _ = split
    cp = ConformalPredictor(method, alpha=0.6).fit(p_cal, y_cal)  # a loose target: tiny sets
    sets = cp.predict_sets(p_test)
    assert len(sets) == len(p_test)
    assert all(len(s) >= 1 for s in sets)
    assert all(s[0] == int(np.argmax(p)) for s, p in zip(sets, p_test, strict=True))
    assert all((np.diff(p[s]) <= 0).all() for s, p in zip(sets, p_test, strict=True))
    # the top-1 rule matters: without it some LAC/APS sets here would be empty
    if method == "lac":
        assert (1 - p_test.max(axis=1) > cp.qhat).any()


def test_lac_sets_are_smaller_than_aps(split) -> None:
    p_cal, y_cal, p_test, y_test = split
    size = {
        m: ConformalPredictor(m, 0.1).fit(p_cal, y_cal).evaluate(p_test, y_test)["mean_set_size"]
        for m in METHODS
    }
    assert size["lac"] <= size["aps"]


def test_qhat_is_the_finite_sample_order_statistic() -> None:
    # 10 rows, alpha=0.2: rank ceil(11 * 0.8) = 9 -> the 9th smallest LAC score 1 - p_true
    p_true = np.linspace(0.95, 0.05, 10)
    probs = np.stack([p_true, 1 - p_true], axis=1)
    cp = ConformalPredictor("lac", alpha=0.2).fit(probs, np.zeros(10, dtype=int))
    assert cp.qhat == pytest.approx(np.sort(1 - p_true)[8])
    assert cp.n_cal == 10


def test_aps_scores_by_hand() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    labels = np.array([2, 2])
    det = ConformalPredictor("aps").scores(probs, labels)
    np.testing.assert_allclose(det, [0.8, 0.6])  # mass ranked strictly above the label
    np.testing.assert_allclose(ConformalPredictor("lac").scores(probs, labels), [0.8, 0.7])
    rnd = ConformalPredictor("aps", randomized=True, seed=5)
    np.testing.assert_array_equal(rnd.scores(probs, labels), rnd.scores(probs, labels))
    assert ((det <= rnd.scores(probs, labels)) & (rnd.scores(probs, labels) <= det + 0.3)).all()


def test_calibration_size_rule() -> None:
    assert min_calibration_size(0.1) == 9  # ceil(10 * 0.9) = 9 <= 9
    assert min_calibration_size(0.05) == 19
    # 10 * (1 - 0.7) is 3.0000000000000004 in floats; n=9 must still be enough for alpha=0.7
    assert min_calibration_size(0.7) == 1
    probs, labels = sample(9, np.random.default_rng(0))
    cp = ConformalPredictor("lac", 0.7).fit(probs, labels)
    assert cp.qhat == np.sort(cp.scores(probs, labels))[2]  # rank ceil(10 * 0.3) = 3
    probs, labels = sample(19, np.random.default_rng(0))
    ConformalPredictor("lac", 0.1).fit(probs[:9], labels[:9])
    with pytest.raises(ValueError, match="need at least 9 rows"):
        ConformalPredictor("lac", 0.1).fit(probs[:8], labels[:8])
    with pytest.raises(ValueError, match=r"need at least 19 rows.*got 18"):
        ConformalPredictor("aps", 0.05).fit(probs[:18], labels[:18])


def test_validation() -> None:
    probs, labels = sample(50, np.random.default_rng(0))
    for alpha in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            ConformalPredictor(alpha=alpha)
    with pytest.raises(ValueError, match="method must be one of"):
        ConformalPredictor(method="raps")
    with pytest.raises(ValueError, match="probs_cal rows must sum to 1"):
        ConformalPredictor().fit(probs * 0.9, labels)
    with pytest.raises(ValueError, match=r"labels_cal must be in \[0, 15\)"):
        ConformalPredictor().fit(probs, labels + K)
    with pytest.raises(RuntimeError, match="not fitted"):
        ConformalPredictor().predict_sets(probs)
    cp = ConformalPredictor().fit(probs, labels)
    with pytest.raises(ValueError, match="probs rows must sum to 1"):
        cp.predict_sets(probs + 0.1)


@pytest.mark.parametrize("randomized", [False, True])
def test_round_trip(split, randomized: bool) -> None:
    p_cal, y_cal, p_test, _ = split
    cp = ConformalPredictor("aps", 0.1, randomized=randomized, seed=3).fit(p_cal, y_cal)
    back = ConformalPredictor.from_dict(json.loads(json.dumps(cp.to_dict())))
    assert back == cp
    assert back.predict_sets(p_test[:100]) == cp.predict_sets(p_test[:100])
    assert ConformalPredictor.from_dict(ConformalPredictor().to_dict()).qhat is None


def _one_hard_class(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Classes 0 and 1 (45% each): the model is confident and right. Class 2 (10%): the model
    gives it 5-30%, so marginal sets reach 90% by covering the easy rows and missing class 2."""
    y = rng.choice(3, size=n, p=[0.45, 0.45, 0.10])
    probs = np.empty((n, 3))
    for i, c in enumerate(y):
        if c < 2:
            p_true = rng.uniform(0.6, 0.95)
            other = rng.dirichlet([1, 1]) * (1 - p_true)
            probs[i] = np.insert(other, c, p_true)
        else:
            p_true = rng.uniform(0.05, 0.30)
            probs[i] = np.append(rng.dirichlet([1, 1]) * (1 - p_true), p_true)
    return probs, y


@pytest.mark.parametrize("method", METHODS)
def test_mondrian_covers_every_class_where_marginal_misses_one(method: str) -> None:
    rng = np.random.default_rng(11)
    p_cal, y_cal = _one_hard_class(20_000, rng)
    p_test, y_test = _one_hard_class(20_000, rng)
    # empty sets and randomized APS allowed: else the always-right top-1 of classes 0 and 1 (APS
    # score 0) covers them at 100% and only class 2 can be measured against the target
    kw = {"allow_empty": True, "randomized": True}
    marginal = ConformalPredictor(method, 0.1, **kw).fit(p_cal, y_cal)
    marginal = marginal.evaluate(p_test, y_test)
    assert marginal["coverage"] == pytest.approx(0.9, abs=0.02)
    assert marginal["per_class_coverage"][2] < 0.75  # the hard class is under-covered

    cp = ConformalPredictor(method, 0.1, mondrian=True, **kw).fit(p_cal, y_cal)
    res = cp.evaluate(p_test, y_test)
    assert cp.fallback == [] and len(cp.qhat_per_class or []) == 3
    for c, cov in enumerate(res["per_class_coverage"]):  # ~2,000 test rows of class 2: sd 0.007
        assert 0.87 <= cov <= 0.94, (c, cov)
    assert res["min_class_coverage"] >= 0.87
    back = ConformalPredictor.from_dict(json.loads(json.dumps(cp.to_dict())))
    assert back.predict_sets(p_test[:200]) == cp.predict_sets(p_test[:200])


def test_mondrian_falls_back_to_marginal_for_a_class_too_rare() -> None:
    rng = np.random.default_rng(2)
    probs, labels = sample(400, rng)
    labels[labels == 3] = 4
    labels[:5] = 3  # 5 calibration rows < 1/alpha - 1 = 9
    cp = ConformalPredictor("aps", 0.1, mondrian=True).fit(probs, labels)
    assert 3 in (cp.fallback or []) and cp.qhat_per_class[3] == cp.qhat  # type: ignore[index]
    with pytest.raises(ValueError, match="fitted on 15 classes"):
        cp.predict_sets(probs[:, :4] / probs[:, :4].sum(axis=1, keepdims=True))
