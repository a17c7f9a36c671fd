"""Fit the cross-list head on the rows whose full category list is reliable, and score sets.

Which rows: the sources that do not know full category lists (the `archive_only_sources` of the
prepared directory's labels.json, plus `train.cross_lists.partial_sources`; see
`paperops.data.crosslists`) and rows whose list cannot be read at the fine level never train,
calibrate or threshold the head. Every primary label of the single-label model is in the head's
label space, plus every category listed by >= `min_papers` training papers.

`set_metrics` is the one definition of the benchmark's figures (sample-averaged F1 of suggested vs
listed sets, micro-F1, top_listed, primary_in_set, mean set size), so training reports and
benchmarks/crosslists.py cannot drift apart.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from paperops.data.crosslists import (
    PARTIAL_CATEGORIES_SOURCES,
    frequent_labels,
    label_sets,
    reliable_mask,
    unreliable_sources,
)
from paperops.data.datamodule import TextSplit, load_splits_for_model, read_labels
from paperops.models.multilabel import CrossListConfig, CrossListHead, Suggestion

log = logging.getLogger(__name__)
HEAD_SPLITS = ("train", "val", "calibration")
Part = tuple[list[str], list[tuple[str, ...]]]


def reliable_part(split: TextSplit, unreliable: Collection[str]) -> tuple[Part, dict[str, int]]:
    """(texts, listed sets) of the split's reliable rows, and the dropped rows per source."""
    mask = reliable_mask(split.frame, unreliable)
    texts = [t for t, keep in zip(split.texts, mask, strict=True) if keep]
    dropped = Counter(split.frame.loc[~mask, "source"].astype(str))
    return (texts, label_sets(split.frame[mask])), dict(sorted(dropped.items()))


def fit_cross_lists(
    splits: Mapping[str, TextSplit],
    unreliable: Collection[str],
    config: CrossListConfig,
    *,
    primary_labels: Sequence[str] = (),
    primary_of: Callable[[list[str]], list[str]] | None = None,
    vectorizer: TfidfVectorizer | None = None,
) -> CrossListHead:
    """The head fitted on the reliable rows of `splits` train / val / calibration; thresholds
    judged against `primary_of`'s answers on calibration (the model the head will serve with;
    default: the head's own top label); `vectorizer`: the primary model's, shared."""
    parts: dict[str, Part] = {}
    excluded: dict[str, dict[str, int]] = {}
    for name in HEAD_SPLITS:
        parts[name], excluded[name] = reliable_part(splits[name], unreliable)
        if not parts[name][0]:
            raise ValueError(
                f"no {name} row has a reliable category list (sources excluded: "
                f"{sorted(unreliable)}); the cross-list head cannot be fitted"
            )
    labels = sorted(
        set(frequent_labels(parts["train"][1], config.min_papers)) | set(primary_labels)
    )
    cal = parts["calibration"]
    primaries = primary_of(cal[0]) if primary_of is not None else None
    head = CrossListHead(labels, config)
    head.fit(parts["train"], parts["val"], cal, primaries, vectorizer=vectorizer)
    head.info |= {"unreliable_sources": sorted(unreliable), "excluded_rows": excluded}
    return head


def fit_from_prepared(
    processed_dir: Path,
    config: CrossListConfig,
    *,
    partial_sources: Collection[str] = PARTIAL_CATEGORIES_SOURCES,
    max_rows: Mapping[str, int | None] | None = None,
    seed: int = 42,
) -> CrossListHead:
    """Load the prepared splits and fit the head (primary labels: the data's labels.json)."""
    splits, labels = load_splits_for_model(processed_dir, HEAD_SPLITS, max_rows=max_rows, seed=seed)
    bad = unreliable_sources(read_labels(processed_dir)[1], partial_sources)
    return fit_cross_lists(splits, bad, config, primary_labels=labels)


def set_metrics(
    suggested: Sequence[Sequence[Suggestion]],
    listed: Sequence[Sequence[str]],
    primaries: Sequence[str],
    keep: Collection[str] | None = None,
) -> dict[str, Any]:
    """Suggested sets scored against listed sets, both restricted to `keep` (None: every label).

    sample_f1: mean over papers of 2|S∩L| / (|S|+|L|); micro_f1 over all (paper, label) pairs;
    top_listed: the first suggestion is listed; primary_in_set: the primary is suggested;
    suggestion_precision: of the suggestions other than the primary, the share that is listed.
    """
    if not (len(suggested) == len(listed) == len(primaries)) or not listed:
        raise ValueError("suggested, listed and primaries must be non-empty and aligned")
    f1s, sizes = [], []
    tp = n_sug = n_lst = top = prim = extra = extra_ok = 0
    for sug, lst, primary in zip(suggested, listed, primaries, strict=True):
        s = [x.label for x in sug if keep is None or x.label in keep]
        truth = {x for x in lst if keep is None or x in keep}
        hit = len(set(s) & truth)
        f1s.append(2 * hit / (len(s) + len(truth)) if s or truth else 1.0)
        tp, n_sug, n_lst = tp + hit, n_sug + len(s), n_lst + len(truth)
        top += bool(sug) and sug[0].label in lst
        prim += primary in {x.label for x in sug}
        others = [x for x in s if x != primary]
        extra, extra_ok = extra + len(others), extra_ok + sum(x in truth for x in others)
        sizes.append(len(sug))
    n = len(listed)
    return {
        "sample_f1": float(np.mean(f1s)),
        "micro_f1": 2 * tp / (n_sug + n_lst) if n_sug + n_lst else 1.0,
        "top_listed": top / n,
        "primary_in_set": prim / n,
        "mean_set_size": float(np.mean(sizes)),
        "mean_listed_size": n_lst / n,
        "suggestion_precision": extra_ok / extra if extra else None,
        "n": n,
    }


def fit_for_bundle(
    settings: Mapping[str, Any],
    splits: Mapping[str, TextSplit],
    meta: Mapping[str, Any],
    model: Any,
) -> tuple[CrossListHead | None, dict[str, Any]]:
    """`train.cross_lists` during `paperops train`: the head for a category-level bundle and a
    summary for training.json (its figures on the reliable validation rows, the model's primary
    forced in). Archive-level data gets no head: its primaries are no fine categories. With
    `share_features` the head reuses `model.vectorizer` (tfidf, hybrid): serving tokenizes a
    request once for both."""
    if meta.get("label_level") != "category":
        reason = f"label_level is {meta.get('label_level')!r}: cross-lists need category"
        log.warning("no cross-list head: %s", reason)
        return None, {"skipped": reason}
    t0 = time.perf_counter()
    own = ("enabled", "partial_sources", "share_features")
    config = CrossListConfig(**{k: v for k, v in settings.items() if k not in own})
    bad = unreliable_sources(dict(meta), settings.get("partial_sources") or ())
    labels = list(model.labels)

    def primary_of(texts: list[str]) -> list[str]:
        return [labels[i] for i in model.logits(texts).argmax(axis=1)]

    shared = getattr(model, "vectorizer", None) if settings.get("share_features", True) else None
    shared = shared if isinstance(shared, TfidfVectorizer) else None
    head = fit_cross_lists(splits, bad, config, primary_labels=labels, primary_of=primary_of,
                           vectorizer=shared)  # fmt: skip
    (texts, sets), _ = reliable_part(splits["val"], bad)
    primaries = primary_of(texts)
    val = set_metrics(head.suggest(texts, primaries), sets, primaries)
    log.info("cross-list head: %d labels, validation %s", len(head.labels),
             {k: round(v, 3) for k, v in val.items() if isinstance(v, float)})  # fmt: skip
    summary = {"labels": len(head.labels), "precision": config.precision, "shared": head.shared,
               "rows": head.info["rows"], "unreliable_sources": bad, "val": val,
               "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    return head, summary
