"""The cross-list head: which fine categories a paper is listed in (primary + cross-lists).

One-vs-rest LinearSVC per category on TF-IDF (1-2 grams, sublinear tf), its margins Platt-scaled
on the validation split into probabilities, and a per-label threshold chosen on the calibration
split for a stated precision (`uncertainty.label_thresholds`). A paper's suggested set is its
primary (the single-label model's answer, or the head's top category) plus every category whose
probability reaches its threshold, ordered by probability, at most `max_labels`.

Why this shape: LinearSVC is the fastest linear learner here (liblinear; ~1 s per category on
80k papers x 200k features on 2 cores), and its margins order papers as well as logistic
regression's at a fraction of the time; Platt on a separate split turns them into probabilities
without touching the order. Weights are stored as float16 (`weights.npz`, 200k x L) and the
vectorizer with skops + a JSON vocabulary: nothing is pickled. Measured figures: see
docs/benchmarks.md ("Cross-list suggestions") and benchmarks/results/crosslists.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from paperops.data import taxonomy
from paperops.io import atomic_write_text
from paperops.models.base import CROSS_LISTS_DIR, ModelLoadError
from paperops.models.tfidf import dump_skops, load_skops, plain_vocabulary
from paperops.uncertainty.label_thresholds import (
    fit_platt_per_label,
    fit_thresholds,
    platt_probabilities,
)

HEAD_DIR = CROSS_LISTS_DIR  # the head's directory inside a classifier bundle
HEAD_FILE, WEIGHTS_FILE, VECTORIZER_FILE = "crosslists.json", "weights.npz", "vectorizer.skops"
FORMAT = "paperops-crosslists/1"


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
    weights: np.ndarray | None = None  # (V, L) float32, C order (float16-exact)
    intercept: np.ndarray | None = None
    platt_a: np.ndarray | None = None
    platt_b: np.ndarray | None = None
    thresholds: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def fit(
        self,
        train: tuple[Sequence[str], Sequence[Sequence[str]]],
        val: tuple[Sequence[str], Sequence[Sequence[str]]],
        calibration: tuple[Sequence[str], Sequence[Sequence[str]]],
        primaries: Sequence[str] | None = None,
    ) -> CrossListHead:
        """Each split is (texts, listed label sets); labels outside `self.labels` are ignored,
        a label without a training paper is never suggested. `primaries`: the single-label
        model's answers on the calibration texts (default: the head's own top label)."""
        c, t0 = self.config, time.perf_counter()
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
        self.weights = weights.astype(np.float16).astype(np.float32)  # what save() keeps
        self.intercept = intercept
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
        if self.vectorizer is None or self.weights is None or self.intercept is None:
            raise RuntimeError("cross-list head is not trained: call fit() or load()")
        x = self.vectorizer.transform(list(texts))
        return np.asarray(x @ self.weights) + self.intercept[None, :]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, L) membership probabilities, column j for labels[j] (they need not sum to 1)."""
        if self.platt_a is None or self.platt_b is None:
            raise RuntimeError("cross-list head is not calibrated: call fit() or load()")
        return platt_probabilities(self.margins(texts), self.platt_a, self.platt_b)

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
        out: list[list[Suggestion]] = []
        for i, row in enumerate(probs):
            primary = primaries[i] if primaries is not None else None
            if primary is None:
                primary = self.labels[int(np.argmax(row))]
            above = [j for j in np.argsort(-row, kind="stable") if row[j] >= self.thresholds[j]]
            chosen = [self.labels[j] for j in above if self.labels[j] != primary]
            chosen = chosen[: max(0, self.config.max_labels - 1)]
            # by probability; a primary the head does not know comes first, without one
            prob = {lab: float(row[index[lab]]) for lab in [primary, *chosen] if lab in index}
            keep = sorted([primary, *chosen], key=lambda lab: -prob.get(lab, 2.0))
            out.append([Suggestion(lab, prob.get(lab), *describe(lab)) for lab in keep])
        return out

    def save(self, directory: Path) -> Path:
        """The head's files into `directory` (created): JSON + npz + skops, no pickle."""
        if self.vectorizer is None or self.thresholds is None:
            raise RuntimeError("cross-list head is not trained: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dump_skops(self.vectorizer, directory / VECTORIZER_FILE, self.vectorizer)
        arrays = {
            "weights": self.weights.astype(np.float16),
            "intercept": self.intercept,
            "platt_a": self.platt_a,
            "platt_b": self.platt_b,
            "thresholds": self.thresholds,
        }
        tmp = directory / f".{WEIGHTS_FILE}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(directory / WEIGHTS_FILE)
        meta = {"format": FORMAT, "labels": self.labels, "config": asdict(self.config),
                "info": self.info}  # fmt: skip
        atomic_write_text(directory / HEAD_FILE, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: Path) -> CrossListHead:
        directory = Path(directory)
        for name in (HEAD_FILE, WEIGHTS_FILE, VECTORIZER_FILE):
            if not (directory / name).is_file():
                raise ModelLoadError(f"{directory / name} not found: no cross-list head here")
        try:
            meta = json.loads((directory / HEAD_FILE).read_text())
            vectorizer = load_skops(directory / VECTORIZER_FILE, lambda v: v)
            with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except ModelLoadError:
            raise
        except Exception as e:  # corrupt zip, truncated file, bad JSON
            raise ModelLoadError(f"{directory} is corrupt ({type(e).__name__}: {e})") from e
        if meta.get("format") != FORMAT or not isinstance(vectorizer, TfidfVectorizer):
            raise ModelLoadError(f"{directory / HEAD_FILE} is not a {FORMAT} head")
        n = len(meta["labels"])
        if arrays["weights"].shape != (len(vectorizer.idf_), n) or len(arrays["thresholds"]) != n:
            raise ModelLoadError(f"{directory}: weights do not match its {n} labels")
        return cls(
            labels=list(meta["labels"]),
            config=CrossListConfig(**meta["config"]),
            vectorizer=vectorizer,
            weights=np.ascontiguousarray(arrays["weights"], dtype=np.float32),
            intercept=arrays["intercept"],
            platt_a=arrays["platt_a"],
            platt_b=arrays["platt_b"],
            thresholds=arrays["thresholds"],
            info=meta.get("info", {}),
        )


def load_cross_lists(bundle_dir: Path) -> CrossListHead | None:
    """The cross-list head saved inside a classifier bundle (`<bundle>/crosslists/`), or None
    when the bundle has none (trained without `train.cross_lists.enabled`)."""
    head = Path(bundle_dir) / HEAD_DIR
    return CrossListHead.load(head) if (head / HEAD_FILE).is_file() else None
