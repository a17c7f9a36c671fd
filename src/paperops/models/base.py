"""What every classifier family shares: the interface, the bundle manifest and one loader.

A trained classifier is a *bundle*: a directory with `model.json` (family, labels, config, and
what the family needs to rebuild itself) plus the family's weight files (skops or safetensors,
never pickle) and, once calibrated, `calibration.json`. Evaluation, the registry and serving only
ever call `load_classifier(dir)`, so a new family plugs in by adding one entry to `FAMILIES`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

META_FILE = "model.json"
CALIBRATION_FILE = "calibration.json"

# family -> "module:Class"; imported lazily so loading a tfidf bundle never imports torch.
FAMILIES = {
    "tfidf": "paperops.models.tfidf:TfidfClassifier",
    "embedding": "paperops.models.embedding:EmbeddingClassifier",
    "finetune": "paperops.models.finetune:FinetuneClassifier",
}


class ModelLoadError(RuntimeError):
    """A saved model is missing, corrupt, unsafe or does not match its label map."""


@runtime_checkable
class Classifier(Protocol):
    """A trained text classifier: raw scores per label, aligned with `labels`."""

    family: str
    labels: list[str]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k) float scores (softmax-able logits or margins), column j for labels[j]."""
        ...

    def save(self, directory: Path) -> Path:
        """Write the bundle files into `directory` (created if missing)."""
        ...


def read_meta(directory: Path) -> dict[str, Any]:
    """model.json of a bundle, with a clear error when it is missing or not JSON."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: {directory} is not a model bundle (train one with `paperops train`)"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is corrupt ({e}); retrain or restore the bundle") from e
    if not isinstance(meta, dict) or "family" not in meta or "labels" not in meta:
        raise ModelLoadError(f"{path} lacks 'family' or 'labels'; retrain or restore the bundle")
    return meta


def check_label_map(meta_path: Path, labels: Sequence[str], expected: Sequence[str] | None) -> None:
    """A model trained on one label map must not be evaluated or served against another."""
    if expected is not None and list(expected) != list(labels):
        missing = sorted(set(expected) - set(labels))[:5]
        extra = sorted(set(labels) - set(expected))[:5]
        raise ModelLoadError(
            f"{meta_path}: label map does not match the data's labels.json "
            f"({len(labels)} model labels vs {len(expected)} data labels; "
            f"missing from model: {missing}, unknown to data: {extra}); "
            "retrain on this data or evaluate on the data the model was trained on"
        )


def family_class(family: str) -> Any:
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    module, name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), name)


def load_classifier(directory: Path, expected_labels: Sequence[str] | None = None) -> Classifier:
    """Load any family's bundle; `expected_labels` guards against a mismatched label map."""
    meta = read_meta(Path(directory))
    try:
        cls = family_class(meta["family"])
    except ModelLoadError as e:  # name the file that says so: the operator fixes that one
        raise ModelLoadError(f"{Path(directory) / META_FILE}: {e}") from None
    return cls.load(Path(directory), expected_labels=expected_labels)
