"""Temperature scaling and calibration metrics, so a reported confidence means what it says.

Model-agnostic and numpy-only at import time (scipy and matplotlib load lazily), so serving can
apply a fitted `TemperatureScaler` without the training extras. Inputs are logits or
probabilities of shape (n, k) and integer labels of shape (n,).

Models that only output probabilities (`predict_proba`, a calibrated linear SVM) can be scaled
too: pass log-probabilities as logits (`logits_from_probs`). softmax(log p / T) is p ** (1/T)
renormalised, i.e. power scaling, which is exactly temperature scaling of any logits that
produced p.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# --- input checks (shared with uncertainty.conformal) ---------------------------------------


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """A non-empty, finite float array of shape (n, k) with k >= 2."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n, k) with n >= 1 and k >= 2; got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite (use logits_from_probs for probabilities of 0)")
    return x


def check_probs(probs: Any, name: str = "probs", atol: float = 1e-3) -> np.ndarray:
    """Like check_logits, plus entries in [0, 1] and rows summing to 1 within `atol`."""
    p = check_logits(probs, name)
    if (p < 0).any() or (p > 1 + atol).any():
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    worst = float(np.abs(p.sum(axis=1) - 1).max())
    if worst > atol:
        raise ValueError(f"{name} rows must sum to 1 (within {atol}); worst row is off by {worst}")
    return p


def check_labels(labels: Any, n: int, k: int, name: str = "labels") -> np.ndarray:
    """Integer class indices of shape (n,), each in [0, k)."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the scores; got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices; got dtype {y.dtype}")
    if (y < 0).any() or (y >= k).any():
        raise ValueError(f"{name} must be in [0, {k}); got min {y.min()}, max {y.max()}")
    return y.astype(np.int64)


# --- softmax, NLL, temperature -----------------------------------------------------------------


def log_softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) on the last axis; subtracting the max keeps exp from overflowing."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T), stable for logits of any magnitude."""
    return np.exp(log_softmax(logits, temperature))


def logits_from_probs(probs: Any, eps: float = 1e-12) -> np.ndarray:
    """Log-probabilities usable as logits; clipping at eps keeps a probability of 0 finite."""
    return np.log(np.clip(check_probs(probs), eps, 1.0))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    z = check_logits(logits)
    y = check_labels(labels, *z.shape)
    return float(-log_softmax(z, temperature)[np.arange(len(y)), y].mean())


def fit_temperature(
    logits: Any, labels: Any, bounds: tuple[float, float] = (0.005, 100.0)
) -> float:
    """The T in `bounds` minimising the NLL of softmax(logits / T) on a held-out split.

    Searched over log T: the NLL is convex in 1/T, hence unimodal in log T, which suits a bounded
    Brent search, and log spacing treats T=0.1 and T=10 alike.
    """
    from scipy.optimize import minimize_scalar

    z = check_logits(logits)
    y = check_labels(labels, *z.shape)
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high; got {bounds}")
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-log_softmax(z, np.exp(log_t))[rows, y].mean())

    res = minimize_scalar(
        loss, bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-5}
    )
    return float(np.exp(res.x))


@dataclass
class TemperatureScaler:
    """One scalar T fitted on a calibration split; saved as JSON next to the model, no pickle."""

    temperature: float = 1.0
    bounds: tuple[float, float] = (0.005, 100.0)

    def fit(self, logits: Any, labels: Any) -> TemperatureScaler:
        self.temperature = fit_temperature(logits, labels, self.bounds)
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities softmax(logits / T)."""
        return softmax(check_logits(logits), self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "temperature", "temperature": self.temperature, "bounds": list(self.bounds)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaler:
        if d.get("kind", "temperature") != "temperature":
            raise ValueError(f"not a temperature scaler: kind={d.get('kind')!r}")
        t = float(d["temperature"])
        if not (np.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be finite and > 0; got {t}")
        lo, hi = d.get("bounds", cls.bounds)
        return cls(temperature=t, bounds=(float(lo), float(hi)))


# --- calibration metrics -----------------------------------------------------------------------


def _bins(probs: Any, labels: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin count, summed top-label confidence and summed correctness; bins are (lo, hi]."""
    p = check_probs(probs)
    y = check_labels(labels, *p.shape)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    return count, np.bincount(idx, conf, n_bins), np.bincount(idx, correct, n_bins)


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE over equal-width bins: sum_b (n_b / n) * |accuracy_b - confidence_b|."""
    count, conf, correct = _bins(probs, labels, n_bins)
    return float(np.abs(correct - conf).sum() / count.sum())


def reliability_table(probs: Any, labels: Any, n_bins: int = 15) -> list[dict[str, Any]]:
    """One JSON-able row per bin; empty bins keep their row, with None for the means."""
    count, conf, correct = _bins(probs, labels, n_bins)
    rows = []
    for b in range(n_bins):
        c = int(count[b])
        rows.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": c,
                "mean_confidence": float(conf[b] / c) if c else None,
                "accuracy": float(correct[b] / c) if c else None,
            }
        )
    return rows


def plot_reliability(
    probs_before: Any, probs_after: Any, labels: Any, path: str | Path, n_bins: int = 15
) -> Path:
    """Reliability curves before/after calibration over a confidence histogram, as a PNG.

    Uses the Agg canvas directly (no pyplot state, works headless) and writes to a temp file in
    the same directory before os.replace, so a reader never sees a half-written image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 7))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for probs, name in ((probs_before, "before"), (probs_after, "after")):
        table = [r for r in reliability_table(probs, labels, n_bins) if r["count"]]
        ece = expected_calibration_error(probs, labels, n_bins)
        top.plot(
            [r["mean_confidence"] for r in table],
            [r["accuracy"] for r in table],
            "o-",
            label=f"{name} (ECE {ece:.3f})",
        )
        bottom.hist(
            np.asarray(probs).max(axis=1), bins=n_bins, range=(0, 1), histtype="step", label=name
        )
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability diagram")
    top.legend(loc="upper left")
    bottom.set(xlabel="top-label confidence", ylabel="count")
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
