"""TF-IDF (1-2 grams, sublinear tf) + a linear classifier with balanced class weights.

The floor every other model must beat. Its decision scores act as logits: temperature scaling on
the calibration split turns them into calibrated probabilities. Saved with skops (never pickle):
loading refuses any type that skops does not trust by default.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from paperops.io import atomic_write_text
from paperops.models.base import META_FILE, ModelLoadError, check_label_map

MODEL_FILE, VOCAB_FILE = "model.skops", "vocabulary.json"
__all__ = [
    "META_FILE",
    "MODEL_FILE",
    "VOCAB_FILE",
    "ModelLoadError",
    "TfidfClassifier",
    "TfidfConfig",
]


@dataclass
class TfidfConfig:
    ngram_range: tuple[int, int] = (1, 2)
    sublinear_tf: bool = True
    min_df: int = 2
    max_features: int | None = 500_000
    classifier: str = "linear_svc"  # linear_svc | logreg
    class_weight: str | None = "balanced"
    C: float = 1.0

    def __post_init__(self) -> None:
        self.ngram_range = tuple(self.ngram_range)  # type: ignore[assignment]
        if self.classifier not in ("linear_svc", "logreg"):
            raise ValueError(
                f"classifier must be 'linear_svc' or 'logreg', got {self.classifier!r}"
            )


def build_vectorizer(c: TfidfConfig) -> TfidfVectorizer:
    return TfidfVectorizer(
        ngram_range=c.ngram_range,
        sublinear_tf=c.sublinear_tf,
        min_df=c.min_df,
        max_features=c.max_features,
        dtype=np.float32,
    )


def build_linear(
    classifier: str, C: float, class_weight: str | None
) -> LinearSVC | LogisticRegression:
    if classifier == "linear_svc":
        return LinearSVC(C=C, class_weight=class_weight)
    return LogisticRegression(C=C, class_weight=class_weight, max_iter=2000)


def label_indices(label_map: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Training labels as indices into `label_map`; at least two classes, none unknown."""
    unknown = sorted(set(labels) - set(label_map))
    if unknown:
        raise ValueError(f"labels not in the label map: {unknown[:5]}")
    index = {lab: i for i, lab in enumerate(label_map)}
    y = np.array([index[lab] for lab in labels])
    if len(np.unique(y)) < 2:
        raise ValueError("need at least two classes to train")
    return y


def plain_vocabulary(vec: TfidfVectorizer) -> None:
    """numpy ints in the vocabulary make skops write one array file per term (hundreds of
    thousands, quadratic in the zip's name list: minutes); plain ints are inline JSON."""
    vec.vocabulary_ = {term: int(i) for term, i in vec.vocabulary_.items()}


def dump_skops(obj: object, path: Path, vec: TfidfVectorizer) -> None:
    """`obj` (which holds `vec`) to `path` atomically, with `vec`'s vocabulary written beside
    it as a plain JSON list (VOCAB_FILE): inside the skops schema every dict entry becomes a
    verbose typed object (~150 MB for 235k terms)."""
    vocab = vec.vocabulary_
    terms = [""] * len(vocab)
    for term, i in vocab.items():
        terms[i] = term
    tmp = path.with_name(f".{path.name}.tmp")
    vec.vocabulary_ = {}
    try:
        sio.dump(obj, tmp, compression=zipfile.ZIP_DEFLATED, compresslevel=6)
    finally:
        vec.vocabulary_ = vocab
    atomic_write_text(path.parent / VOCAB_FILE, json.dumps(terms, ensure_ascii=False))
    tmp.replace(path)


def load_skops(path: Path, vectorizer_of: Callable[[Any], TfidfVectorizer]) -> Any:
    """The object in `path` (only types skops trusts by default), with the vocabulary of the
    vectorizer `vectorizer_of(obj)` restored from VOCAB_FILE beside it."""
    vocab_path = path.parent / VOCAB_FILE
    if not vocab_path.is_file():
        raise ModelLoadError(f"{vocab_path} not found: train a model first (paperops train)")
    untrusted = sio.get_untrusted_types(file=path)
    if untrusted:
        raise ModelLoadError(
            f"{path} contains types skops does not trust: {untrusted[:5]}; refusing to load it"
        )
    obj = sio.load(path, trusted=[])
    terms = json.loads(vocab_path.read_text(encoding="utf-8"))
    vec = vectorizer_of(obj)
    if not isinstance(terms, list) or len(terms) != len(vec.idf_):
        raise ModelLoadError(
            f"{vocab_path} does not match {path} ({len(terms)} terms vs "
            f"{len(vec.idf_)} idf weights); retrain or restore the bundle"
        )
    vec.vocabulary_ = {str(t): i for i, t in enumerate(terms)}
    return obj


@dataclass
class TfidfClassifier:
    family = "tfidf"
    labels: list[str]
    config: TfidfConfig = field(default_factory=TfidfConfig)
    pipeline: Pipeline | None = None

    def _build(self) -> Pipeline:
        c = self.config
        clf = build_linear(c.classifier, c.C, c.class_weight)
        return Pipeline([("tfidf", build_vectorizer(c)), ("clf", clf)])

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> TfidfClassifier:
        y = label_indices(self.labels, labels)
        self.pipeline = self._build().fit(list(texts), y)
        plain_vocabulary(self.pipeline.named_steps["tfidf"])
        return self

    @property
    def vectorizer(self) -> TfidfVectorizer | None:
        """The fitted TF-IDF step; the cross-list head shares it (`models.multilabel`)."""
        return None if self.pipeline is None else self.pipeline.named_steps["tfidf"]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k) scores aligned with `self.labels` (classes never seen in training get -inf)."""
        if self.pipeline is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        return self.logits_from_features(self.pipeline.named_steps["tfidf"].transform(list(texts)))

    def logits_with_words(self, texts: Sequence[str]) -> tuple[np.ndarray, Any]:
        """`logits` and the TF-IDF rows they were computed from (the cross-list head reuses
        them: one tokenization per request)."""
        if self.pipeline is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        words = self.pipeline.named_steps["tfidf"].transform(list(texts))
        return self.logits_from_features(words), words

    def logits_from_features(self, x: Any) -> np.ndarray:
        """`logits` from rows of `self.vectorizer.transform(texts)`: serving computes them once
        for this model and the cross-list head."""
        if self.pipeline is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        clf = self.pipeline.named_steps["clf"]
        scores = clf.decision_function(x)
        if scores.ndim == 1:  # binary: sklearn returns the positive-class margin only
            scores = np.stack([-scores, scores], axis=1)
        out = np.full((x.shape[0], len(self.labels)), -np.inf, dtype=np.float64)
        out[:, clf.classes_] = scores
        return out

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.pipeline is None:
            raise RuntimeError("model is not trained: nothing to save")
        dump_skops(self.pipeline, directory / MODEL_FILE, self.pipeline.named_steps["tfidf"])
        meta = {"family": "tfidf", "labels": self.labels, "config": asdict(self.config)}
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: Path, expected_labels: Sequence[str] | None = None) -> TfidfClassifier:
        directory = Path(directory)
        model_path, meta_path = directory / MODEL_FILE, directory / META_FILE
        vocab_path = directory / VOCAB_FILE
        for p in (model_path, meta_path, vocab_path):
            if not p.is_file():
                raise ModelLoadError(f"{p} not found: train a model first (paperops train)")
        try:
            meta = json.loads(meta_path.read_text())
            pipeline = load_skops(model_path, lambda p: p.named_steps["tfidf"])
        except ModelLoadError:
            raise
        except Exception as e:  # corrupt zip, truncated file, bad JSON
            raise ModelLoadError(
                f"{directory} is corrupt ({type(e).__name__}: {e}); retrain or restore it"
            ) from e
        if meta.get("family") != "tfidf":
            raise ModelLoadError(f"{meta_path} is a {meta.get('family')!r} model, not tfidf")
        check_label_map(meta_path, meta["labels"], expected_labels)
        n_classes = len(pipeline.named_steps["clf"].classes_)
        if n_classes > len(meta["labels"]):
            raise ModelLoadError(
                f"{model_path} has {n_classes} classes but its label map {len(meta['labels'])}"
            )
        return cls(labels=meta["labels"], config=TfidfConfig(**meta["config"]), pipeline=pipeline)
