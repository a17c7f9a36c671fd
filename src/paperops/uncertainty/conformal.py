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

Marginal sets cover 1 - alpha on average over papers, not per class: a rare class can sit far below
the target while the big ones over-cover (issue 17: 90% sets covered 0.860 of papers from other
listings). `mondrian=True` fits one qhat per class on that class's calibration rows
(class-conditional, "Mondrian" conformal; Vovk 2003), so coverage holds for every class whose
calibration rows are enough (n_c >= 1/alpha - 1); classes with fewer fall back to the marginal
qhat, and `fallback` lists them.

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
    mondrian: bool = False
    qhat_per_class: list[float] | None = None  # mondrian: one threshold per class index
    fallback: list[int] | None = None  # mondrian: classes too rare for their own qhat

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
        if self.mondrian:
            y = check_labels(labels_cal, len(s), np.shape(probs_cal)[1])
            per_class, fallback = [], []
            for c in range(np.shape(probs_cal)[1]):
                sc = np.sort(s[y == c])
                if len(sc) < need:
                    per_class.append(self.qhat)
                    fallback.append(c)
                else:
                    per_class.append(float(sc[_rank(len(sc), self.alpha) - 1]))
            self.qhat_per_class, self.fallback = per_class, fallback
        return self

    def _thresholds(self, order: np.ndarray) -> np.ndarray | float:
        """qhat for each (row, ranked class): one number, or per class under mondrian."""
        if self.qhat_per_class is None:
            return float(self.qhat)  # type: ignore[arg-type]
        q = np.asarray(self.qhat_per_class, dtype=np.float64)
        if len(q) != order.shape[1]:
            raise ValueError(
                f"the mondrian predictor was fitted on {len(q)} classes; got {order.shape[1]}"
            )
        return q[order]

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
        keep = s <= self._thresholds(order)
        if not self.allow_empty:
            keep[:, 0] = True
        return [o[m].tolist() for o, m in zip(order, keep, strict=True)]

    def evaluate(self, probs: Any, labels: Any) -> dict[str, Any]:
        """Empirical coverage (overall and per class) and mean set size on a test split, next to
        the target 1 - alpha."""
        sets = self.predict_sets(probs)
        y = check_labels(labels, len(sets), np.shape(probs)[1])
        return {
            **coverage_report(sets, y, np.shape(probs)[1]),
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
            "mondrian": self.mondrian,
            "qhat_per_class": self.qhat_per_class,
            "fallback": self.fallback,
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
            mondrian=bool(d.get("mondrian", False)),
            qhat_per_class=None
            if d.get("qhat_per_class") is None
            else [float(q) for q in d["qhat_per_class"]],
            fallback=None if d.get("fallback") is None else [int(c) for c in d["fallback"]],
        )


def coverage_report(sets: list[list[int]], y: np.ndarray, k: int) -> dict[str, Any]:
    """Coverage overall and per class index (None where the class has no rows), the worst class,
    and the mean set size: marginal coverage alone hides a class the sets keep missing."""
    hit = np.array([t in s for t, s in zip(y.tolist(), sets, strict=True)], dtype=bool)
    per_class = [float(hit[y == c].mean()) if (y == c).any() else None for c in range(k)]
    present = [c for c in per_class if c is not None]
    return {
        "coverage": float(hit.mean()),
        "mean_set_size": float(np.mean([len(s) for s in sets])),
        "per_class_coverage": per_class,
        "min_class_coverage": min(present) if present else None,
    }
