"""The cross-list head on disk: `<bundle>/crosslists/`, nothing pickled.

`crosslists.json` (format, labels, settings, fit summary), `weights.npz` (float16 weights,
intercepts, Platt parameters, thresholds, the vectorizer columns used; read with
`allow_pickle=False`) and, when the head has a TF-IDF vectorizer of its own,
`vectorizer.skops` + `vocabulary.json` (skops, only default-trusted types). A head that shares
the primary model's vectorizer (tfidf and hybrid bundles) stores the sha256 of that vectorizer's
idf weights instead and refuses any other vectorizer: one tokenization per request serves both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from paperops.io import atomic_write_text
from paperops.models.base import CROSS_LISTS_DIR, ModelLoadError, load_classifier
from paperops.models.multilabel import CrossListConfig, CrossListHead
from paperops.models.tfidf import dump_skops, load_skops

HEAD_DIR = CROSS_LISTS_DIR  # the head's directory inside a classifier bundle
HEAD_FILE, WEIGHTS_FILE, VECTORIZER_FILE = "crosslists.json", "weights.npz", "vectorizer.skops"
FORMAT = "paperops-crosslists/1"
SHARED = "primary"  # crosslists.json "features": the bundle's own model's vectorizer


def idf_digest(vectorizer: TfidfVectorizer) -> str:
    """Names a fitted vectorizer: its idf weights decide every feature value."""
    return hashlib.sha256(np.asarray(vectorizer.idf_, dtype=np.float32).tobytes()).hexdigest()


def save_head(head: CrossListHead, directory: Path) -> Path:
    """The head's files into `directory` (created)."""
    if head.vectorizer is None or head.weights is None or head.thresholds is None:
        raise RuntimeError("cross-list head is not trained: nothing to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "weights": head.weights.astype(np.float16),
        "intercept": head.intercept,
        "platt_a": head.platt_a,
        "platt_b": head.platt_b,
        "thresholds": head.thresholds,
    }
    if head.columns is not None:
        arrays["columns"] = head.columns
    features: dict[str, Any] = {"kind": "own"}
    if head.shared:
        features = {"kind": SHARED, "idf_sha256": idf_digest(head.vectorizer),
                    "n_features": len(head.vectorizer.idf_)}  # fmt: skip
    else:
        dump_skops(head.vectorizer, directory / VECTORIZER_FILE, head.vectorizer)
    tmp = directory / f".{WEIGHTS_FILE}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.replace(directory / WEIGHTS_FILE)
    meta = {"format": FORMAT, "labels": head.labels, "config": asdict(head.config),
            "features": features, "info": head.info}  # fmt: skip
    atomic_write_text(directory / HEAD_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def load_head(directory: Path, vectorizer: TfidfVectorizer | None = None) -> CrossListHead:
    """A saved head. One that shares its bundle's vectorizer takes `vectorizer` (the loaded
    primary model's, e.g. `classifier.vectorizer`) or, without it, loads the bundle's model."""
    directory = Path(directory)
    for name in (HEAD_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ModelLoadError(f"{directory / name} not found: no cross-list head here")
    try:
        meta = json.loads((directory / HEAD_FILE).read_text())
        features = meta.get("features", {"kind": "own"})
        if features["kind"] != SHARED:
            vectorizer = load_skops(directory / VECTORIZER_FILE, lambda v: v)
        elif vectorizer is None:
            vectorizer = getattr(load_classifier(directory.parent), "vectorizer", None)
        with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ModelLoadError:
        raise
    except Exception as e:  # corrupt zip, truncated file, bad JSON
        raise ModelLoadError(f"{directory} is corrupt ({type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT or not isinstance(vectorizer, TfidfVectorizer):
        raise ModelLoadError(f"{directory / HEAD_FILE} is not a {FORMAT} head with a vectorizer")
    if features["kind"] == SHARED and idf_digest(vectorizer) != features["idf_sha256"]:
        raise ModelLoadError(
            f"{directory}: the head was trained on another TF-IDF vectorizer than the one given "
            "(idf weights differ); load it with its own bundle's model"
        )
    n, columns = len(meta["labels"]), arrays.get("columns")
    width = len(vectorizer.idf_) if columns is None else len(columns)
    if arrays["weights"].shape != (width, n) or len(arrays["thresholds"]) != n:
        raise ModelLoadError(f"{directory}: weights do not match its {n} labels")
    return CrossListHead(
        labels=list(meta["labels"]),
        config=CrossListConfig(**meta["config"]),
        vectorizer=vectorizer,
        weights=np.ascontiguousarray(arrays["weights"], dtype=np.float32),
        columns=columns,
        shared=features["kind"] == SHARED,
        intercept=arrays["intercept"],
        platt_a=arrays["platt_a"],
        platt_b=arrays["platt_b"],
        thresholds=arrays["thresholds"],
        info=meta.get("info", {}),
    )


def load_cross_lists(
    bundle_dir: Path, vectorizer: TfidfVectorizer | None = None
) -> CrossListHead | None:
    """The cross-list head of a classifier bundle or export (`<dir>/crosslists/`), or None when
    it has none (trained without `train.cross_lists.enabled`). Pass the loaded primary model's
    `vectorizer` to share it instead of loading the model a second time."""
    head = Path(bundle_dir) / HEAD_DIR
    return load_head(head, vectorizer) if (head / HEAD_FILE).is_file() else None
