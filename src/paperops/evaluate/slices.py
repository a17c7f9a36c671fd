"""Slices: metrics by archive, abstract length and year, so an average cannot hide a weak subgroup.

Slices smaller than `min_slice_size` are reported as such, not scored; ECE is only shown for
slices of at least SLICE_MIN_ECE papers (below that its binning noise dominates).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from paperops.data.taxonomy import archive_of
from paperops.evaluate.config import EvalConfig
from paperops.evaluate.metrics import _prf, confusion_matrix
from paperops.uncertainty.calibrate import (
    expected_calibration_error,
)

if TYPE_CHECKING:
    pass


# A slice's ECE is reported only from this many papers up; below it the binning noise dominates.
SLICE_MIN_ECE = 50


def _archive(label: str) -> str:

    try:
        return archive_of(label)
    except ValueError:
        return label


# New-style ids: YYMM.NNNN(N) since April 2007 (Kaggle dumps sometimes lost the leading zero:
# "704.0001"). Old style: archive[.SUBJ]/YYMMNNN until March 2007.
_NEW_ID = re.compile(r"^(?:arxiv:)?(\d{3,4})\.\d{4,5}(?:v\d+)?$", re.IGNORECASE)


_OLD_ID = re.compile(r"^[a-z][a-z-]*(?:\.[a-z-]+)?/(\d{2})(\d{2})\d{3}(?:v\d+)?$", re.IGNORECASE)


_DATE_YEAR = re.compile(r"^\s*((?:19|20)\d{2})\b")


def year_of(arxiv_id: Any, update_date: Any = None) -> int | None:
    """Submission year from an arXiv id, else update_date's year, else None.

    The id encodes the first version's month, which is what "year" means for a paper;
    update_date is the last revision, a fallback only.
    """
    s = str(arxiv_id).strip() if arxiv_id is not None else ""
    if m := _NEW_ID.match(s):
        yymm = m.group(1).zfill(4)
        if 1 <= int(yymm[2:]) <= 12:
            return 2000 + int(yymm[:2])
    elif m := _OLD_ID.match(s):
        yy, mm = int(m.group(1)), int(m.group(2))
        if 1 <= mm <= 12:
            return 1900 + yy if yy >= 91 else 2000 + yy  # arXiv began in August 1991
    if update_date is None:
        return None
    year = getattr(update_date, "year", None)  # datetime / pandas Timestamp
    if isinstance(year, int):
        return year
    if m := _DATE_YEAR.match(str(update_date)):
        return int(m.group(1))
    return None


def length_bucket_names(edges: Sequence[int]) -> list[str]:
    """Bucket names for word-count edges: [100, 150] -> ["<100", "100-149", ">=150"]."""
    names = [f"<{edges[0]}"]
    names += [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    return [*names, f">={edges[-1]}"]


def length_bucket(n_words: int, edges: Sequence[int]) -> str:
    """The bucket of a word count; an edge belongs to the bucket it starts."""
    return length_bucket_names(edges)[int(np.searchsorted(np.asarray(edges), n_words, "right"))]


def _slice_row(
    value: str, idx: np.ndarray, probs: np.ndarray, y: np.ndarray, n_bins: int
) -> dict[str, Any]:
    n = len(idx)
    row: dict[str, Any] = {"value": value, "n": int(n)}
    if n == 0:
        return {**row, "accuracy": None, "macro_f1": None, "mean_confidence": None, "ece": None}
    p, t = probs[idx], y[idx]
    pred = p.argmax(axis=1)
    *_, f1, support, _ = _prf(confusion_matrix(t, pred, probs.shape[1]))
    return {
        **row,
        "accuracy": float((pred == t).mean()),
        "macro_f1": float(f1[support > 0].mean()),
        "mean_confidence": float(p.max(axis=1).mean()),
        "ece": expected_calibration_error(p, t, n_bins) if n >= SLICE_MIN_ECE else None,
    }


def slice_metrics(
    frame: Any, probs: np.ndarray, y: np.ndarray, labels: Sequence[str], cfg: EvalConfig
) -> dict[str, list[dict[str, Any]]]:
    """Per archive, abstract-length bucket and year: n, accuracy, macro F1, confidence, ECE.

    `probs` are the calibrated (temperature-scaled) test probabilities. A slice's macro F1
    averages over the classes with papers in the slice: a class that is only (wrongly) predicted
    there has F1 0 by construction, and counting it would make an archive slice read as failing
    when it is its neighbours that leak in (that error is already in the true classes' F1). Every
    slicing partitions
    the test split, so each one's n sum to n_test. A slicing whose column the frame lacks is left
    out rather than invented.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, list[str]] = {}
    groups["archive"] = [_archive(labels[j]) for j in y]
    if "abstract" in frame:
        words = [len(str(a).split()) for a in frame["abstract"]]
        groups["abstract_length"] = [length_bucket(w, cfg.length_buckets) for w in words]
    if "id" in frame or "update_date" in frame:
        ids = frame["id"] if "id" in frame else [None] * len(y)
        dates = frame["update_date"] if "update_date" in frame else [None] * len(y)
        years = [year_of(i, d) for i, d in zip(ids, dates, strict=True)]
        groups["year"] = ["unknown" if yr is None else str(yr) for yr in years]
    for name, keys in groups.items():
        arr = np.asarray(keys, dtype=object)
        if name == "abstract_length":
            order = length_bucket_names(cfg.length_buckets)  # empty buckets keep their row
        elif name == "year":
            order = sorted(set(keys), key=lambda v: (v == "unknown", v))
        else:
            order = sorted(set(keys))
        out[name] = [_slice_row(v, np.flatnonzero(arr == v), probs, y, cfg.n_bins) for v in order]
    return out
