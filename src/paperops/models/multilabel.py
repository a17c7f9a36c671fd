"""The cross-list head: which fine categories a paper is listed in (primary + cross-lists).

One-vs-rest LinearSVC per category on TF-IDF (1-2 grams, sublinear tf), its margins Platt-scaled
on the validation split into probabilities, and a per-label threshold chosen on the calibration
split for a stated precision (`uncertainty.label_thresholds`). A paper's suggested set is its
primary (the single-label model's answer, or the head's top category) plus every category whose
probability reaches its threshold, ordered by probability, at most `max_labels`.

Why this shape: LinearSVC is the fast linear learner on 2 cores (the 111 categories of the
benchmark data train in 167 s on 77k papers; logistic regression took 857 s for the 62-class
single-label model for +0.016 macro-F1, benchmarks/quality.py), and Platt on a separate split
turns margins into probabilities without changing their order. With a tfidf or hybrid primary
the head reuses its fitted vectorizer (`vectorizer=` in `fit`), so a request is tokenized once.
Measured (stratified test split, 11,016 papers): sample-F1 0.717 against 0.670 for the primary
alone, top suggestion listed 0.865; details in docs/benchmarks.md ("Cross-list suggestions").
Saving and loading: `models.multilabel_io` (float16 weights in npz, skops, JSON; no pickle).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from paperops.data import taxonomy
from paperops.models.tfidf import plain_vocabulary
from paperops.uncertainty.label_thresholds import (
    fit_platt_per_label,
    fit_thresholds,
    platt_probabilities,
)


class Suggestion(NamedTuple):
    """One suggested category: code, membership probability (None for a primary the head does
    not know), human name, archive."""

    label: str
    probability: float | None
    name: str
    archive: str


@dataclass
class CrossListConfig:
    precision: float = 0.5  # each suggested label's precision on the calibration split
    min_support: int = 10  # fewer calibration positives: the pooled threshold of rare labels
    min_papers: int = 30  # a label needs this many training papers listing it
    max_labels: int = 5  # longest suggested list (arXiv papers rarely list more)
    C: float = 0.5
    max_features: int | None = 200_000
    min_df: int = 2


def describe(label: str) -> tuple[str, str]:
    """(name, archive) of a label from the taxonomy; the code itself for custom labels."""
    try:
        return taxonomy.display_name(label), taxonomy.archive_of(label)
    except ValueError:
        return label, label.split(".", 1)[0]


def indicator(sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """(n, L) booleans: paper i lists labels[j] (labels outside `labels` are ignored)."""
    index = {lab: j for j, lab in enumerate(labels)}
    y = np.zeros((len(sets), len(labels)), dtype=bool)
    for i, s in enumerate(sets):
        for lab in s:
            if lab in index:
                y[i, index[lab]] = True
    return y


@dataclass
class CrossListHead:
    labels: list[str]
    config: CrossListConfig = field(default_factory=CrossListConfig)
    vectorizer: TfidfVectorizer | None = None
    weights: np.ndarray | None = None  # (len(columns) or V, L) float32 (float16-exact)
    columns: np.ndarray | None = None  # the vectorizer's features the weights use (None: all)
    shared: bool = False  # the vectorizer is the primary model's (not saved with the head)
    intercept: np.ndarray | None = None
    platt_a: np.ndarray | None = None
    platt_b: np.ndarray | None = None
    thresholds: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _full: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def fit(
        self,
        train: tuple[Sequence[str], Sequence[Sequence[str]]],
        val: tuple[Sequence[str], Sequence[Sequence[str]]],
        calibration: tuple[Sequence[str], Sequence[Sequence[str]]],
        primaries: Sequence[str] | None = None,
        vectorizer: TfidfVectorizer | None = None,
    ) -> CrossListHead:
        """Each split is (texts, listed label sets); labels outside `self.labels` are ignored,
        a label without a training paper is never suggested. `primaries`: the single-label
        model's answers on the calibration texts (default: the head's own top label).
        `vectorizer`: the primary model's fitted TF-IDF, shared (its `max_features` most
        frequent terms are used) instead of fitting one of the head's own."""
        c, t0 = self.config, time.perf_counter()
        self.shared, self.columns = vectorizer is not None, None
        if vectorizer is not None:
            self.vectorizer = vectorizer
            x = vectorizer.transform(list(train[0]))
            if c.max_features is not None and c.max_features < x.shape[1]:  # lowest idf first
                order = np.argsort(vectorizer.idf_, kind="stable")[: c.max_features]
                self.columns = np.sort(order).astype(np.int32)
                x = x[:, self.columns]
        else:
            self.vectorizer = TfidfVectorizer(
                ngram_range=(1, 2), sublinear_tf=True, min_df=c.min_df,
                max_features=c.max_features, dtype=np.float32,
            )  # fmt: skip
            x = self.vectorizer.fit_transform(list(train[0]))
            plain_vocabulary(self.vectorizer)
        y = indicator(train[1], self.labels)
        weights = np.zeros((x.shape[1], len(self.labels)), dtype=np.float32)
        intercept = np.full(len(self.labels), -1e3, dtype=np.float32)  # unseen: never
        for j in range(len(self.labels)):
            if 0 < y[:, j].sum() < len(y):
                svc = LinearSVC(C=c.C).fit(x, y[:, j])
                weights[:, j], intercept[j] = svc.coef_[0], svc.intercept_[0]
        self.weights = weights.astype(np.float16).astype(np.float32)  # what is saved
        self.intercept, self._full = intercept, None
        self.info = {
            "rows": {"train": len(y), "val": len(val[0]), "calibration": len(calibration[0])},
            "train_positives": dict(zip(self.labels, y.sum(axis=0).tolist(), strict=True)),
            "fit_seconds": round(time.perf_counter() - t0, 1),
        }
        yv = indicator(val[1], self.labels)
        self.platt_a, self.platt_b = fit_platt_per_label(self.margins(val[0]), yv)
        probs = self.predict_proba(calibration[0])
        self.set_thresholds(probs, calibration[1], c.precision, primaries)
        return self

    def set_thresholds(
        self,
        probs: np.ndarray,
        sets: Sequence[Sequence[str]],
        precision: float,
        primaries: Sequence[str] | None = None,
    ) -> None:
        """Per-label thresholds for `precision` from calibration probabilities, listed sets and
        primaries (default: the head's top label), judged where the label is not the primary;
        labels without a training paper stay at inf."""
        if primaries is None:
            primaries = [self.labels[j] for j in probs.argmax(axis=1)]
        skip = indicator([[p] for p in primaries], self.labels)
        chosen = fit_thresholds(
            probs, indicator(sets, self.labels), precision, self.config.min_support, skip
        )
        seen = np.array([self.info["train_positives"][lab] > 0 for lab in self.labels])
        self.thresholds = np.where(seen, chosen.thresholds, np.inf)
        sources = [src if ok else "never" for src, ok in zip(chosen.sources, seen, strict=True)]
        self.config = replace(self.config, precision=precision)
        self.info["threshold_source"] = dict(zip(self.labels, sources, strict=True))

    def margins(self, texts: Sequence[str]) -> np.ndarray:
        """(n, L) one-vs-rest margins."""
        if self.vectorizer is None:
            raise RuntimeError("cross-list head is not trained: call fit() or load()")
        return self.margins_from_features(self.vectorizer.transform(list(texts)))

    def margins_from_features(self, x: sparse.csr_matrix) -> np.ndarray:
        """Margins from the vectorizer's TF-IDF rows (with a shared vectorizer: the very matrix
        the primary model computed, so a request is tokenized once)."""
        if self.weights is None or self.intercept is None:
            raise RuntimeError("cross-list head is not trained: call fit() or load()")
        if self.columns is None:
            return np.asarray(x @ self.weights) + self.intercept[None, :]
        if self._full is None:  # zero rows for the unused terms: one fast sparse matmul
            full = np.zeros((len(self.vectorizer.idf_), len(self.labels)), dtype=np.float32)
            full[self.columns] = self.weights
            self._full = full
        return np.asarray(x @ self._full) + self.intercept[None, :]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, L) membership probabilities, column j for labels[j] (they need not sum to 1)."""
        if self.vectorizer is None:
            raise RuntimeError("cross-list head is not trained: call fit() or load()")
        return self.predict_proba_features(self.vectorizer.transform(list(texts)))

    def predict_proba_features(self, x: sparse.csr_matrix) -> np.ndarray:
        """`predict_proba` from TF-IDF rows of `self.vectorizer` (see margins_from_features)."""
        if self.platt_a is None or self.platt_b is None:
            raise RuntimeError("cross-list head is not calibrated: call fit() or load()")
        return platt_probabilities(self.margins_from_features(x), self.platt_a, self.platt_b)

    def suggest(
        self, texts: Sequence[str], primaries: Sequence[str | None] | None = None
    ) -> list[list[Suggestion]]:
        """Per text, the ordered suggested categories (see the module doc)."""
        return self.suggest_from_proba(self.predict_proba(texts), primaries)

    def suggest_from_proba(
        self, probs: np.ndarray, primaries: Sequence[str | None] | None = None
    ) -> list[list[Suggestion]]:
        if self.thresholds is None:
            raise RuntimeError("cross-list head has no thresholds: call fit() or load()")
        if primaries is not None and len(primaries) != len(probs):
            raise ValueError(f"{len(primaries)} primaries for {len(probs)} texts")
        index = {lab: j for j, lab in enumerate(self.labels)}
        hits = probs >= self.thresholds[None, :]  # few per row: sort those, not every label
        out: list[list[Suggestion]] = []
        for i, row in enumerate(probs):
            primary = primaries[i] if primaries is not None else None
            if primary is None:
                primary = self.labels[int(np.argmax(row))]
            above = np.flatnonzero(hits[i])
            above = above[np.argsort(-row[above], kind="stable")]
            chosen = [self.labels[j] for j in above if self.labels[j] != primary]
            chosen = chosen[: max(0, self.config.max_labels - 1)]
            # by probability; a primary the head does not know comes first, without one
            prob = {lab: float(row[index[lab]]) for lab in [primary, *chosen] if lab in index}
            keep = sorted([primary, *chosen], key=lambda lab: -prob.get(lab, 2.0))
            out.append([Suggestion(lab, prob.get(lab), *describe(lab)) for lab in keep])
        return out
