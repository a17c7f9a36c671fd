"""Two-sample statistics for drift: a reference sample against a window of live inputs.

Each function returns a score that is ~0 (or 0.5 for AUC) when both samples come from the same
distribution, whatever the sample sizes, so one threshold works for small and large windows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats as sps

_WORD = re.compile(r"[a-z][a-z0-9\-]+")
EPS = 1e-4  # floor for empty bins: PSI and JS are infinite on a zero otherwise


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of a numeric feature over the reference's quantile bins.

    0.1 is the customary "some shift", 0.25 "major shift"."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    if reference.size == 0 or current.size == 0:
        raise ValueError("psi needs non-empty samples")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_idx = np.searchsorted(edges, reference, side="right")
    cur_idx = np.searchsorted(edges, current, side="right")
    k = len(edges) + 1
    return _psi_from_counts(np.bincount(ref_idx, minlength=k), np.bincount(cur_idx, minlength=k))


def categorical_psi(reference: Mapping[str, float], current: Mapping[str, float]) -> float:
    """PSI over the union of categories (counts or proportions)."""
    return _psi_from_counts(*_aligned(reference, current))


def _aligned(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Two category -> count maps as vectors over the union of their keys (0 where absent)."""
    keys = sorted(set(a) | set(b))
    return (np.array([a.get(k, 0.0) for k in keys], float),
            np.array([b.get(k, 0.0) for k in keys], float))  # fmt: skip


def _psi_from_counts(ref: np.ndarray, cur: np.ndarray) -> float:
    p = np.maximum(ref / max(ref.sum(), 1e-12), EPS)
    q = np.maximum(cur / max(cur.sum(), 1e-12), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def chi_square(reference: Mapping[str, float], current: Mapping[str, int]) -> tuple[float, float]:
    """Goodness of fit of the current counts to the reference proportions: (statistic, p).

    Categories the reference never saw get a small expected count instead of zero, so a new
    class shows up as a huge statistic rather than a division by zero."""
    keys = sorted(set(reference) | set(current))
    observed = np.array([current.get(k, 0) for k in keys], float)
    n = observed.sum()
    if n == 0:
        raise ValueError("chi_square needs a non-empty current sample")
    p = np.array([reference.get(k, 0.0) for k in keys], float)
    p = np.maximum(p / p.sum(), EPS)
    p /= p.sum()
    statistic, p_value = sps.chisquare(observed, n * p)
    return float(statistic), float(p_value)


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov two-sample test: (D, p)."""
    result = sps.ks_2samp(np.asarray(reference, float), np.asarray(current, float))
    return float(result.statistic), float(result.pvalue)


def words(text: str) -> list[str]:
    """Lower-cased words of 2+ characters: what the vocabulary check counts."""
    return _WORD.findall(text.lower())


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Lower-cased word counts: the unit of the vocabulary check."""
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(words(t))
    return counts


def js_divergence(p_counts: Mapping[str, float], q_counts: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint)."""
    return js_divergence_arrays(*_aligned(p_counts, q_counts))


def js_divergence_arrays(p: np.ndarray, q: np.ndarray) -> float:
    """js_divergence over aligned count vectors."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.sum() == 0 or q.sum() == 0:
        raise ValueError("js_divergence needs non-empty distributions")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def domain_auc(
    reference: np.ndarray, current: np.ndarray, *, folds: int = 5, seed: int = 0
) -> float:
    """Cross-validated ROC AUC of a classifier told to separate current from reference rows.

    0.5: it cannot tell them apart (no drift); 1.0: they are disjoint. The classes are balanced
    by subsampling the larger side, so the AUC means the same for any window size."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(reference), len(current))
    if n < folds * 2:
        raise ValueError(f"domain_auc needs at least {folds * 2} rows per side, got {n}")
    ref = reference[rng.choice(len(reference), n, replace=False)]
    cur = current[rng.choice(len(current), n, replace=False)]
    x = np.vstack([ref, cur])
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def mmd_rbf(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    permutations: int = 100,
    max_rows: int = 500,
    seed: int = 0,
) -> tuple[float, float]:
    """Squared maximum mean discrepancy with an RBF kernel (median-distance bandwidth) and its
    permutation p-value. Rows are capped per side: the kernel matrix is quadratic."""
    rng = np.random.default_rng(seed)
    ref = reference[rng.choice(len(reference), min(max_rows, len(reference)), replace=False)]
    cur = current[rng.choice(len(current), min(max_rows, len(current)), replace=False)]
    x = np.vstack([ref, cur]).astype(np.float64)
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    median = np.median(d2[np.triu_indices_from(d2, k=1)])
    kernel = np.exp(-d2 / max(median, 1e-12))
    n = len(ref)

    def stat(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        return float(
            kernel[np.ix_(a, a)].mean()
            + kernel[np.ix_(b, b)].mean()
            - 2 * kernel[np.ix_(a, b)].mean()
        )

    order = np.arange(len(x))
    observed = stat(order)
    exceed = sum(stat(rng.permutation(order)) >= observed for _ in range(permutations))
    return observed, (exceed + 1) / (permutations + 1)
