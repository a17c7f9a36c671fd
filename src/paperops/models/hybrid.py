"""TF-IDF features and sentence embeddings side by side in one linear classifier.

Why: TF-IDF knows the words of the training listings, a sentence encoder knows what a paper is
about when the words differ; on papers from listings no model saw, one LinearSVC over both
beat either alone (cap 3,000 per archive, 4 held-out sources: macro-F1 0.507 vs TF-IDF 0.475 and
MiniLM + MLP head 0.479; `docs/benchmarks.md` has the full-size table). The embedding half is
MiniLM as an int8 ONNX graph (`export.encoder`, ~150 abstracts/s on 2 cores, 3x PyTorch fp32),
copied into the bundle: training, evaluation and serving embed with the very same graph, and
serving needs ONNX Runtime and scikit-learn, no torch.

Bundle: `model.skops` ({"tfidf": vectorizer, "clf": LinearSVC}) + `vocabulary.json` (as
tfidf) + `encoder/` (graph, tokenizer, encoder.json with the graph's sha256) + `model.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from paperops.io import atomic_write_text
from paperops.models.base import META_FILE, ModelLoadError, check_label_map
from paperops.models.embedding_cache import EmbeddingCache
from paperops.models.onnx_text import (
    ENCODER_DIR,
    OnnxEncoder,
    copy_encoder_graph,
    load_encoder_graph,
)
from paperops.models.tfidf import (
    MODEL_FILE,
    TfidfConfig,
    build_linear,
    build_vectorizer,
    dump_skops,
    label_indices,
    load_skops,
    plain_vocabulary,
)

# calls with fewer texts (requests) embed directly and never touch the cache; batch jobs (fit,
# evaluate, offline scoring) read and fill it. As the embedding family's `cache_min_texts`.
MIN_CACHE_TEXTS = 256
__all__ = ["ENCODER_DIR", "HybridClassifier", "HybridConfig"]


@dataclass
class HybridConfig(TfidfConfig):
    encoder: str = "default"  # as the embedding family: the packaged MiniLM, a name or a path
    max_seq_length: int = 128
    # the embedding block's scale next to the unit-norm TF-IDF row, and the SVM's C: out of
    # source (cap 8,000, 4 held-out listings) w 1/2/3/5 x C 0.25-1 gave macro-F1 0.493-0.505;
    # w=2, C=0.5 keeps accuracy above the baseline's (0.674 vs 0.671) at 0.502
    embed_weight: float = 2.0
    C: float = 0.5
    cache_dir: str | None = None  # per-text embedding cache (None: no cache)
    graph_dir: str | None = None  # where int8 encoder graphs are built (None: the work dir)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embed_weight <= 0:
            raise ValueError(f"embed_weight must be > 0, got {self.embed_weight}")
        for name in ("cache_dir", "graph_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HybridConfig:
        from paperops.config import dataclass_from_mapping

        values = {k: v for k, v in dict(values).items() if k != "family"}
        return dataclass_from_mapping(cls, values, "hybrid config")


class HybridClassifier:
    family = "hybrid"
    needs_encoder_graph = True  # `paperops train` builds the int8 graph, then attach_encoder()

    def __init__(self, labels: Sequence[str], config: HybridConfig | None = None) -> None:
        self.labels = list(labels)
        self.config = config or HybridConfig()
        self.vectorizer: Any = None
        self.clf: Any = None
        self.encoder: OnnxEncoder | None = None
        self._cache: EmbeddingCache | None = None
        self.fit_summary: dict[str, Any] = {}

    def attach_encoder(self, graph_dir: Path) -> None:
        self.encoder = OnnxEncoder(Path(graph_dir))

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.encoder is None:
            raise RuntimeError("no encoder graph: attach_encoder(dir) or load() first")
        cache_dir = Path(self.config.cache_dir) if self.config.cache_dir else None
        if cache_dir is not None and len(texts) >= MIN_CACHE_TEXTS and cache_dir.is_dir():
            if self._cache is None:  # one index per model: built once, not per call
                self._cache = EmbeddingCache(cache_dir)
            return self._cache.get_or_compute(
                self.encoder, list(texts), progress=len(texts) >= 1000
            )
        return self.encoder.embed_texts(list(texts))

    def _features(
        self, texts: Sequence[str], fit: bool = False, words: Any = None
    ) -> sparse.csr_matrix:
        if words is None:
            vec = self.vectorizer
            words = vec.fit_transform(texts) if fit else vec.transform(texts)
        emb = self._embed(texts)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        dense = sparse.csr_matrix((self.config.embed_weight * emb).astype(np.float32))
        return sparse.hstack([words, dense], format="csr")

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> HybridClassifier:
        y = label_indices(self.labels, labels)
        if self.config.cache_dir:
            Path(self.config.cache_dir).mkdir(parents=True, exist_ok=True)
        c = self.config
        self.vectorizer = build_vectorizer(c)
        X = self._features(list(texts), fit=True)
        self.clf = build_linear(c.classifier, c.C, c.class_weight).fit(X, y)
        plain_vocabulary(self.vectorizer)
        return self

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k) decision scores aligned with `self.labels` (-inf for classes never seen)."""
        return self._scores(texts, None)

    def logits_with_words(self, texts: Sequence[str]) -> tuple[np.ndarray, Any]:
        """`logits` and the word TF-IDF rows inside them (the cross-list head reuses them)."""
        if self.vectorizer is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        words = self.vectorizer.transform(list(texts))
        return self._scores(texts, words), words

    def _scores(self, texts: Sequence[str], words: Any) -> np.ndarray:
        if self.clf is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        out = np.full((len(texts), len(self.labels)), -np.inf, dtype=np.float64)
        if not texts:
            return out
        scores = self.clf.decision_function(self._features(list(texts), words=words))
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1)
        out[:, self.clf.classes_] = scores
        return out

    def save(self, directory: Path) -> Path:
        if self.clf is None or self.encoder is None:
            raise RuntimeError("model is not trained: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dump_skops(
            {"tfidf": self.vectorizer, "clf": self.clf}, directory / MODEL_FILE, self.vectorizer
        )
        meta = {
            "family": self.family,
            "labels": self.labels,
            "config": asdict(self.config),
            "encoder": copy_encoder_graph(self.encoder, directory / ENCODER_DIR),
        }
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(
        cls, directory: Path, expected_labels: Sequence[str] | None = None
    ) -> HybridClassifier:
        directory = Path(directory)
        meta_path, model_path = directory / META_FILE, directory / MODEL_FILE
        for p in (meta_path, model_path):
            if not p.is_file():
                raise ModelLoadError(f"{p} not found: train a model first (paperops train)")
        try:
            meta = json.loads(meta_path.read_text())
            parts = load_skops(model_path, lambda d: d["tfidf"])
            config = HybridConfig.from_dict(meta["config"])
        except ModelLoadError:
            raise
        except Exception as e:  # corrupt zip, truncated file, bad JSON, unknown config keys
            raise ModelLoadError(
                f"{directory} is corrupt ({type(e).__name__}: {e}); retrain or restore it"
            ) from e
        if meta.get("family") != cls.family:
            raise ModelLoadError(f"{meta_path} is a {meta.get('family')!r} model, not hybrid")
        check_label_map(meta_path, meta["labels"], expected_labels)
        model = cls(meta["labels"], config)
        model.vectorizer, model.clf = parts["tfidf"], parts["clf"]
        model.encoder = load_encoder_graph(directory / ENCODER_DIR, meta.get("encoder") or {})
        if len(model.clf.classes_) > len(model.labels):
            raise ModelLoadError(
                f"{model_path} has {len(model.clf.classes_)} classes but its label map "
                f"{len(model.labels)}"
            )
        return model
