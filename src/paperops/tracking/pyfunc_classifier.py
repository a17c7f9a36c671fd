"""The MLflow pyfunc wrapper around a paperops model bundle, logged as *models-from-code*.

`paperops.tracking.log_model_bundle` passes this file's path as `python_model=`, so MLflow stores
the source of this module next to the bundle instead of cloudpickling an object: loading a
registered model never unpickles anything. The bundle itself (model.json + skops/safetensors
weights + optional calibration.json) is an MLflow artifact named `bundle`; `load_context` loads it
with `paperops.models.base.load_classifier`, so any family works and paperops must be installed
where the model is loaded.

Input: a DataFrame with `title` and `abstract` columns. Output: a DataFrame with `label` (top
label), `confidence` (its probability) and one `prob_<label>` column per label, where the
probabilities are softmax(logits / T) with T from the bundle's calibration.json (T = 1 without).
A bundle with a cross-list head (`crosslists/`) adds `cross_lists`: the suggested other
categories, most probable first, space-separated like arXiv's own `categories` field ("" when
none passed its threshold), the same list the API's cross_lists=true answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from paperops.data.text import model_text
from paperops.models.base import CALIBRATION_FILE, CROSS_LISTS_DIR, load_classifier
from paperops.models.multilabel_io import load_cross_lists
from paperops.uncertainty.calibrate import TemperatureScaler, softmax

BUNDLE_ARTIFACT = "bundle"
PROB_PREFIX = "prob_"
INPUT_COLUMNS = ("title", "abstract")
# Logged with every model: MLflow loads the model and predicts on it while logging, so a bundle
# that cannot load or predict fails at training time, not when serving picks it up.
INPUT_EXAMPLE = {
    "title": ["Attention Is All You Need"],
    "abstract": ["We propose a network architecture based solely on attention mechanisms."],
}


def read_temperature(bundle_dir: Path) -> float:
    """T from calibration.json ({"temperature": {"temperature": T, ...}, ...}); 1.0 when absent."""

    path = Path(bundle_dir) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0
    data = json.loads(path.read_text())
    section = data.get("temperature") if isinstance(data, dict) else None
    if section is None:
        return 1.0
    return TemperatureScaler.from_dict(section).temperature


CROSS_LISTS_COLUMN = "cross_lists"


def output_columns(labels: list[str], cross_lists: bool = False) -> list[str]:
    """The prediction frame's columns, known from model.json alone (used for the signature)."""
    extra = [CROSS_LISTS_COLUMN] if cross_lists else []
    return ["label", "confidence", *(PROB_PREFIX + lab for lab in labels), *extra]


def has_cross_lists(bundle_dir: Path) -> bool:
    return (Path(bundle_dir) / CROSS_LISTS_DIR).is_dir()


def _texts(model_input: Any) -> list[str]:

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"model input lacks column(s) {missing}; expected a DataFrame with "
            f"{list(INPUT_COLUMNS)}, got {list(frame.columns)}"
        )
    titles = frame["title"].fillna("").astype(str)
    abstracts = frame["abstract"].fillna("").astype(str)
    return [model_text(t, a) for t, a in zip(titles, abstracts, strict=True)]


class BundleModel(PythonModel):
    """Top label + calibrated probabilities of any paperops classifier bundle."""

    head: Any = None  # the bundle's CrossListHead, when it has one (set by load_context)

    def load_context(self, context: Any) -> None:

        bundle_dir = Path(context.artifacts[BUNDLE_ARTIFACT])
        self.classifier = load_classifier(bundle_dir)
        self.temperature = read_temperature(bundle_dir)
        self.head = load_cross_lists(bundle_dir, getattr(self.classifier, "vectorizer", None))

    # MLflow reads this hint: pd.DataFrame means "no schema from hints" (the logged signature
    # describes the input); a missing or other hint makes MLflow warn on every load.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:

        texts = _texts(model_input)
        labels = list(self.classifier.labels)
        head = self.head
        if not texts:
            return pd.DataFrame(columns=output_columns(labels, head is not None))
        words = None
        if head is not None and head.shared and hasattr(self.classifier, "logits_with_words"):
            logits, words = self.classifier.logits_with_words(texts)  # one tokenization for both
        else:
            logits = self.classifier.logits(texts)
        probs = softmax(logits, self.temperature)
        top = probs.argmax(axis=1)
        out = pd.DataFrame(probs, columns=[PROB_PREFIX + lab for lab in labels])
        out.insert(0, "confidence", probs[np.arange(len(texts)), top].astype(np.float64))
        primaries = [labels[i] for i in top]
        out.insert(0, "label", primaries)
        if head is not None:
            head_probs = (
                head.predict_proba(texts) if words is None else head.predict_proba_features(words)
            )
            suggested = head.suggest_from_proba(head_probs, primaries)
            out[CROSS_LISTS_COLUMN] = [
                " ".join(s.label for s in row if s.label != primary)
                for row, primary in zip(suggested, primaries, strict=True)
            ]
        return out


mlflow.models.set_model(BundleModel())
