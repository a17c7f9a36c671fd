"""Per-label probabilities and thresholds for multi-label answers ("which categories?").

Two steps, each on its own held-out split so neither is fitted on the rows it is judged on:
- **Platt scaling** (on validation): a one-vs-rest margin of label j becomes a probability
  sigmoid(a_j * margin + b_j). Labels with too few positives share one pooled (a, b).
- **Precision thresholds** (on calibration): label j is suggested when its probability reaches
  t_j, the *lowest* value at which the calibration papers with p_j >= t_j are listed in j at
  least `precision` of the time, counting only papers whose primary is not j (there j is in
  the answer anyway; counted in, the easy primaries flatter the extra suggestions: 0.39 on
  fresh synthetic papers for a 0.8 target). Labels with fewer than `min_support` positive
  papers share one threshold chosen the same way on their pooled scores; a label that never
  reaches `precision` (or was never seen) gets t_j = inf: it is never suggested.

Why precision thresholds rather than conformal multi-label sets: a conformal set guarantees that
*all* listed categories are inside with probability 1 - alpha, which on papers with up to five
categories needs sets far larger than any listing; an author asks "is this suggestion right?",
which is precision per label. The guarantee is empirical (on the calibration split), not
distribution-free; the benchmark reports how far it holds on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Platt needs both classes; fewer positives than this and the pooled fit is used.
MIN_PLATT_POSITIVES = 5
POOLED, OWN, NEVER = "pooled", "own", "never"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def fit_platt(scores: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """(a, b) maximising the likelihood of y under sigmoid(a * scores + b), with Platt's
    smoothed targets (so separable data gives finite a). Newton steps on two parameters."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"Platt scaling needs both classes, got {n_pos} positives, {n_neg} negatives"
        )
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(a: float, b: float) -> float:  # cross-entropy against the smoothed targets
        z = a * s + b
        return float(np.sum(np.logaddexp(0.0, z) - t * z))

    a, b = 0.0, float(np.log((n_pos + 1.0) / (n_neg + 1.0)))
    current = loss(a, b)
    for _ in range(max_iter):
        p = _sigmoid(a * s + b)
        w = np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.dot(p - t, s), np.sum(p - t)])
        h = np.array([[np.dot(w, s * s), np.dot(w, s)], [np.dot(w, s), w.sum()]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        scale = 1.0
        while scale > 1e-6 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2  # backtracking: Newton steps may overshoot far from the optimum
        a, b = a - scale * step[0], b - scale * step[1]
        previous, current = current, loss(a, b)
        if previous - current < 1e-10 * max(1.0, abs(current)):
            break
    return float(a), float(b)


def platt_probabilities(scores: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, L) probabilities from (n, L) margins and per-label (a, b)."""
    return _sigmoid(np.asarray(scores, dtype=np.float64) * a[None, :] + b[None, :])


def fit_platt_per_label(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label (a, b) over the columns of (n, L) `scores` / `y`; labels with fewer than
    MIN_PLATT_POSITIVES positives (or no negative) get the fit pooled over all labels."""
    y = np.asarray(y, dtype=bool)
    pooled = fit_platt(scores.ravel(), y.ravel())
    a = np.full(scores.shape[1], pooled[0])
    b = np.full(scores.shape[1], pooled[1])
    for j in range(scores.shape[1]):
        n_pos = int(y[:, j].sum())
        if n_pos >= MIN_PLATT_POSITIVES and n_pos < len(y):
            a[j], b[j] = fit_platt(scores[:, j], y[:, j])
    return a, b


def precision_threshold(probs: np.ndarray, y: np.ndarray, precision: float) -> float:
    """The lowest t such that the items with probs >= t have precision >= `precision`
    (inf when no t reaches it, or there is no positive)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=bool).ravel()
    if not y.any():
        return float("inf")
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    prec = np.cumsum(y) / np.arange(1, len(y) + 1)
    # a threshold t = p[i] takes every item tied with p[i]: only the last of a tie run counts
    last_of_tie = np.r_[p[1:] != p[:-1], True]
    ok = np.flatnonzero(last_of_tie & (prec >= precision))
    return float(p[ok[-1]]) if len(ok) else float("inf")


@dataclass
class LabelThresholds:
    """Per-label thresholds with how each was chosen ("own", "pooled", "never")."""

    thresholds: np.ndarray
    sources: list[str]
    precision: float
    min_support: int


def fit_thresholds(
    probs: np.ndarray,
    y: np.ndarray,
    precision: float,
    min_support: int,
    skip: np.ndarray | None = None,
) -> LabelThresholds:
    """Thresholds for every column of (n, L) calibration `probs` / `y` (see the module doc).

    `skip` (n, L) marks entries left out: a label that is a paper's primary is in its set
    anyway, so each threshold is judged on the papers where the label would be an *extra*
    suggestion (those are the harder cases: precision over all papers flatters it)."""
    if not 0 < precision < 1:
        raise ValueError(f"precision must be in (0, 1), got {precision}")
    y = np.asarray(y, dtype=bool)
    use = np.ones_like(y) if skip is None else ~np.asarray(skip, dtype=bool)
    support = (y & use).sum(axis=0)
    rare = np.flatnonzero((support > 0) & (support < min_support))
    is_rare = set(rare.tolist())
    pooled = (
        precision_threshold(probs[:, rare][use[:, rare]], y[:, rare][use[:, rare]], precision)
        if len(rare)
        else float("inf")
    )
    out = np.full(probs.shape[1], np.inf)
    sources = [NEVER] * probs.shape[1]
    for j in range(probs.shape[1]):
        if support[j] == 0:
            continue
        rows = use[:, j]
        t = pooled if j in is_rare else precision_threshold(probs[rows, j], y[rows, j], precision)
        out[j] = t
        sources[j] = (POOLED if j in is_rare else OWN) if np.isfinite(t) else NEVER
    return LabelThresholds(out, sources, precision, min_support)
