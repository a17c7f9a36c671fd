"""Split conformal prediction sets: a label set per paper that holds the true class with
probability >= 1 - alpha, whatever the model, given calibration and test data are exchangeable.

Two nonconformity scores over predicted probabilities (n, k):
- "lac": 1 - p_true (Sadinle et al. 2019). Smallest sets on average, but coverage is uneven:
  easy inputs over-cover, hard ones under-cover.
- "aps": probability mass ranked above the true class (Romano et al. 2020, adaptive prediction
  sets). Sets grow on uncertain inputs. The default is deterministic: the score of a class is the
  mass strictly above it, so a set runs down the ranking up to and including the class whose mass
  crosses qhat. With `randomized=True` a uniform u adds u * p_class, as in the paper; it gives
  smaller sets with exact coverage, and u is drawn from `seed` so results are reproducible.

Only numpy: a fitted predictor serves without the training extras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from paperops.uncertainty.calibrate import check_labels, check_probs

METHODS = ("aps", "lac")


def min_calibration_size(alpha: float) -> int:
    """Smallest n with ceil((n + 1)(1 - alpha)) <= n, i.e. n >= 1/alpha - 1."""
    return math.ceil((1 - alpha) / alpha - 1e-9)


def _rank(n: int, alpha: float) -> int:
    """ceil((n + 1)(1 - alpha)); the epsilon absorbs float error (10 * (1 - 0.7) > 3)."""
    return math.ceil((n + 1) * (1 - alpha) - 1e-9)


def _sorted_scores(
    p: np.ndarray, method: str, u: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Classes by descending probability and each one's score in that order, both (n, k).

    Calibration and prediction both go through here, so a label's score is computed identically
    in both and `y in set <=> score(y) <= qhat` holds exactly, ties and rounding included.
    """
    order = np.argsort(-p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    if method == "lac":
        return order, 1.0 - ps
    above = np.cumsum(ps, axis=1) - ps  # mass ranked strictly above each class
    return order, above if u is None else above + u[:, None] * ps


@dataclass
class ConformalPredictor:
    """Fit qhat on a held-out calibration split, then predict sets of class indices."""

    method: str = "aps"
    alpha: float = 0.1
    randomized: bool = False
    seed: int = 0
    allow_empty: bool = False
    qhat: float | None = None
    n_cal: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1); got {self.alpha}")

    def _u(self, n: int, stream: int) -> np.ndarray | None:
        """Uniform tie-breakers for randomized APS; separate streams for calibration and test."""
        if not (self.randomized and self.method == "aps"):
            return None
        return np.random.default_rng([self.seed, stream]).random(n)

    def scores(self, probs: Any, labels: Any) -> np.ndarray:
        """Nonconformity score of each true label (calibration stream for randomized APS)."""
        p = check_probs(probs, "probs_cal")
        y = check_labels(labels, *p.shape, name="labels_cal")
        order, s = _sorted_scores(p, self.method, self._u(len(y), 0))
        pos = (order == y[:, None]).argmax(axis=1)
        return s[np.arange(len(y)), pos]

    def fit(self, probs_cal: Any, labels_cal: Any) -> ConformalPredictor:
        """qhat = the ceil((n+1)(1-alpha))-th smallest calibration score.

        That is np.quantile(scores, ceil((n+1)(1-alpha))/n, method="inverted_cdf"): the exact
        finite-sample rank, giving 1-alpha <= coverage <= 1-alpha + 1/(n+1) for untied scores.
        (method="higher" at the same level lands one rank higher: valid, slightly conservative.)
        """
        s = self.scores(probs_cal, labels_cal)
        n, need = len(s), min_calibration_size(self.alpha)
        if n < need:
            raise ValueError(
                f"calibration set too small for alpha={self.alpha}: need at least {need} rows "
                f"so that ceil((n+1)(1-alpha)) <= n; got {n}"
            )
        self.qhat = float(np.sort(s)[_rank(n, self.alpha) - 1])
        self.n_cal = n
        return self

    def predict_sets(self, probs: Any, u: np.ndarray | None = None) -> list[list[int]]:
        """Per row, the classes with score <= qhat, most probable first.

        `u` overrides the randomized-APS tie-breakers (one uniform per row): serving draws them
        from a hash of each text, so a paper gets the same set whatever batch it lands in.

        With `allow_empty=False` a set always holds at least the top-1 class, which makes coverage
        at least the model's accuracy; an accurate model then over-covers a 90% target. Exact
        coverage needs the randomized score and empty sets ("abstain: no class is needed to reach
        1 - alpha"), which `allow_empty=True` permits.
        """
        if self.qhat is None:
            raise RuntimeError("ConformalPredictor is not fitted; call fit() first")
        p = check_probs(probs)
        if u is not None and self.randomized and self.method == "aps":
            u = np.asarray(u, dtype=np.float64)
            if u.shape != (len(p),) or (u < 0).any() or (u >= 1).any():
                raise ValueError(f"u must be {len(p)} uniforms in [0, 1); got shape {u.shape}")
        else:
            u = self._u(len(p), 1)
        order, s = _sorted_scores(p, self.method, u)
        keep = s <= self.qhat
        if not self.allow_empty:
            keep[:, 0] = True
        return [o[m].tolist() for o, m in zip(order, keep, strict=True)]

    def evaluate(self, probs: Any, labels: Any) -> dict[str, float]:
        """Empirical coverage and mean set size on a test split, next to the target 1 - alpha."""
        sets = self.predict_sets(probs)
        y = check_labels(labels, len(sets), np.shape(probs)[1])
        return {
            "coverage": float(np.mean([t in s for t, s in zip(y.tolist(), sets, strict=True)])),
            "mean_set_size": float(np.mean([len(s) for s in sets])),
            "target": 1 - self.alpha,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "alpha": self.alpha,
            "randomized": self.randomized,
            "allow_empty": self.allow_empty,
            "seed": self.seed,
            "qhat": self.qhat,
            "n_cal": self.n_cal,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalPredictor:
        qhat = d.get("qhat")
        return cls(
            method=str(d["method"]),
            alpha=float(d["alpha"]),
            randomized=bool(d.get("randomized", False)),
            allow_empty=bool(d.get("allow_empty", False)),
            seed=int(d.get("seed", 0)),
            qhat=None if qhat is None else float(qhat),
            n_cal=int(d.get("n_cal", 0)),
        )
