"""What every classifier family shares: the interface, the bundle manifest and one loader.

A trained model is a *bundle*: a directory with `model.json` (family, labels, config, and
what the family needs to rebuild itself) plus the family's weight files (skops or safetensors,
never pickle), once calibrated `calibration.json`, and `training.json` from `paperops train`;
optionally `crosslists/`, the cross-list head (`models.multilabel.load_cross_lists`).
Evaluation, the registry and serving only ever call `load_classifier(dir)`, so a new family plugs
in by adding one entry to `FAMILIES`.

This is also the one place that says which *task* a bundle (or an export of one) serves:
`task_of` / `is_language_model`. Training, evaluation, export, tracking and serving dispatch on
it instead of comparing family strings of their own.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from paperops.uncertainty.calibration import Calibration

META_FILE = "model.json"
CALIBRATION_FILE = "calibration.json"
TRAINING_FILE = "training.json"
# optional part: the cross-list head (`models.multilabel`), trained with train.cross_lists
CROSS_LISTS_DIR = "crosslists"
EXPORT_FILE = "export.json"  # marks an export directory (`paperops export`)
# families whose export is an ONNX graph (encoder + head); tfidf and hybrid exports stay
# scikit-learn (hybrid's bundle already holds its int8 encoder graph)
NEURAL_FAMILIES = ("embedding", "finetune")
# scikit-learn families: fitted as `fit(texts, labels)` in one call (no Lightning trainer),
# served by runtime "sklearn" (hybrid runs its bundled int8 encoder with ONNX Runtime)
SKLEARN_FAMILIES = ("tfidf", "hybrid")

CLASSIFIER = "classifier"
LANGUAGE_MODEL = "lm"
LM_FAMILY = "lm"  # the one language-model family (GPT-2 architecture, `models.lm`)
# family -> "module:Class"; imported lazily so loading a tfidf bundle never imports torch.
FAMILIES = {
    "tfidf": "paperops.models.tfidf:TfidfClassifier",
    "embedding": "paperops.models.embedding:EmbeddingClassifier",
    "finetune": "paperops.models.finetune:FinetuneClassifier",
    "hybrid": "paperops.models.hybrid:HybridClassifier",
    "lm": "paperops.models.lm:CausalLM",
}
# family -> task; every family not listed here is a classifier
TASK_OF_FAMILY = {LM_FAMILY: LANGUAGE_MODEL}


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


def task_of_family(family: str) -> str:
    """`CLASSIFIER` or `LANGUAGE_MODEL` for a family name (also a config's `model.family`)."""
    return TASK_OF_FAMILY.get(str(family), CLASSIFIER)


def task_of(meta: dict[str, Any]) -> str:
    """The task of a bundle's or an export's `model.json` / `export.json` content."""
    return task_of_family(str(meta.get("family", "")))


def is_language_model(meta: dict[str, Any]) -> bool:
    """True for a language-model bundle or export (meta as read from its JSON file)."""
    return task_of(meta) == LANGUAGE_MODEL


def probe_task(directory: Path, manifest: str = META_FILE) -> str | None:
    """The task named by `directory/manifest` (model.json of a bundle, export.json of an export),
    or None when it is missing or unreadable: a probe for "what is this directory?", no error."""
    try:
        meta = json.loads((Path(directory) / manifest).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return task_of(meta) if isinstance(meta, dict) and "family" in meta else None


def bundle_task(directory: Path) -> str:
    """The task of the bundle in `directory` (clear error when it is no bundle)."""
    return task_of(read_meta(directory))


def training_info(model_dir: Path) -> dict[str, Any]:
    """training.json of a bundle ({} for bundles made outside `paperops train`)."""
    path = Path(model_dir) / TRAINING_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is corrupt ({e}); retrain or restore the bundle") from e


def load_calibration(directory: Path) -> Calibration | None:
    """The bundle's calibration.json (None when it has none); a corrupt one names the file."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return Calibration.load(path)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is corrupt ({e}); re-run `paperops train`") from e


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
    if is_language_model(meta):
        raise ModelLoadError(
            f"{Path(directory) / META_FILE}: this is a language model, not a classifier "
            "(generate with it: `paperops generate`)"
        )
    try:
        cls = family_class(meta["family"])
    except ModelLoadError as e:  # name the file that says so: the operator fixes that one
        raise ModelLoadError(f"{Path(directory) / META_FILE}: {e}") from None
    return cls.load(Path(directory), expected_labels=expected_labels)
