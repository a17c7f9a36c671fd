"""How prepared papers are cut into train / val / calibration / test, and the per-class cap.

Three splits, because each answers a different question:
- `stratified`: per class, seeded. Measures a model on papers like its training papers.
- `time`: oldest train, newest test. Measures how a model ages.
- `source`: whole source listings held out as the test split. Measures a model on papers from
  listings it never saw; issue 17 found the shipped tfidf at macro-F1 0.560 stratified but 0.295
  on other listings, a gap a split that shares sources with training cannot show.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from paperops.data.errors import DataError

SPLITS = ("train", "val", "calibration", "test")
SPLIT_KINDS = ("stratified", "time", "source")


def _allocate(n: int, fractions: list[float]) -> list[int]:
    """Split n items by fractions (largest remainder), giving every split at least one item."""
    raw = np.array(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):  # take from the largest split for any empty one
        if counts[i] == 0 and counts.max() > 1:
            counts[counts.argmax()] -= 1
            counts[i] += 1
    return counts.tolist()


def _class_rng(seed: int, label: object, stream: int = 0) -> np.random.Generator:
    """One RNG stream per class, so adding or removing a class does not reshuffle the others."""
    return np.random.default_rng([seed, zlib.crc32(str(label).encode()), stream])


def stratified_split(
    labels: np.ndarray, fractions: dict[str, float], seed: int, names: tuple[str, ...] = SPLITS
) -> np.ndarray:
    """Per-class seeded shuffle and cut into `names` (fractions renormalised over them)."""
    out = np.empty(len(labels), dtype=object)
    # Renormalise only for a subset of the splits, so the classic 4-way cut stays bit-identical.
    total = 1.0 if names == SPLITS else sum(fractions[n] for n in names)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = np.random.default_rng([seed, zlib.crc32(str(label).encode())]).permutation(idx)
        start = 0
        sizes = _allocate(len(idx), [fractions[n] / total for n in names])
        for name, k in zip(names, sizes, strict=True):
            out[idx[start : start + k]] = name
            start += k
    return out


def time_split(df: pd.DataFrame, fractions: dict[str, float]) -> np.ndarray:
    """Oldest papers train, newest test: measures how a model ages. Ties broken by id."""
    order = np.lexsort((df["id"].to_numpy(), df["update_date"].to_numpy()))
    out = np.empty(len(df), dtype=object)
    start = 0
    for name, k in zip(SPLITS, _allocate(len(df), [fractions[n] for n in SPLITS]), strict=True):
        out[order[start : start + k]] = name
        start += k
    return out


def choose_holdout(sources: list[str], listed: list[str], count: int, seed: int) -> list[str]:
    """The held-out sources: `listed` when given (each must exist), else `count` drawn with `seed`
    from the sorted source names (sorted, so file order does not change the draw)."""
    known = sorted(set(sources))
    if listed:
        unknown = sorted(set(listed) - set(known))
        if unknown:
            raise DataError(
                f"holdout source(s) {unknown} are not in the data; sources present: {known}",
                rule="holdout_sources",
            )
        return sorted(set(listed))
    if not 0 < count < len(known):
        raise DataError(
            f"split=source needs 0 < holdout_count < the number of sources ({len(known)}: "
            f"{known}); got {count}. List sources in data.holdout_sources or change the count",
            rule="holdout_sources",
        )
    rng = np.random.default_rng([seed, 7])
    return sorted(rng.choice(known, size=count, replace=False).tolist())


def source_split(
    df: pd.DataFrame, holdout: list[str], fractions: dict[str, float], seed: int
) -> np.ndarray:
    """Rows of held-out sources -> test; the rest stratified over train / val / calibration."""
    out = np.empty(len(df), dtype=object)
    held = df["source"].isin(holdout).to_numpy()
    out[held] = "test"
    inner = stratified_split(df.loc[~held, "label"].to_numpy(), fractions, seed, SPLITS[:3])
    out[~held] = inner
    return out


def cap_per_class(labels: pd.Series, max_per_class: int, seed: int) -> pd.Series:
    """A boolean mask keeping at most `max_per_class` rows of each class, drawn with `seed`.

    Without it the big archives drown the small ones: 82k of the augment file's 124k rows are cs.
    """
    keep = np.zeros(len(labels), dtype=bool)
    values = labels.to_numpy()
    for label in np.unique(values):
        idx = np.flatnonzero(values == label)
        if len(idx) > max_per_class:
            idx = _class_rng(seed, label, 1).choice(idx, size=max_per_class, replace=False)
        keep[idx] = True
    return pd.Series(keep, index=labels.index)
