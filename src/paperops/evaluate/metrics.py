"""Headline metrics from probabilities and labels: accuracy, top-k, macro/weighted F1, the
confusion matrix and the per-class table (numpy only, no scikit-learn needed to evaluate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from paperops.data.taxonomy import label_name

if TYPE_CHECKING:
    pass


def confusion_matrix(y_true: Any, y_pred: Any, k: int) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1, support, and which classes are present (true or pred)."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support, (support + predicted) > 0


def classification_metrics(
    probs: np.ndarray, y: np.ndarray, labels: Sequence[str], top_k: int = 3
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro/weighted F1, per-class rows and the confusion matrix.

    Macro F1 averages over the classes present in `y` or the predictions (sklearn's default), so a
    class absent from a small test split neither counts as 0 nor vanishes when it is mispredicted.
    """
    k = len(labels)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, k)
    precision, recall, f1, support, present = _prf(cm)
    n = len(y)
    kk = min(top_k, k)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :kk]  # stable: top-1 == argmax
    return {
        "accuracy": float(np.trace(cm) / n),
        f"top{top_k}_accuracy": float((top == y[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "per_class": [
            {
                "label": lab,
                "name": label_name(lab),
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "support": int(support[j]),
            }
            for j, lab in enumerate(labels)
        ],
        "confusion_matrix": cm.tolist(),
    }
