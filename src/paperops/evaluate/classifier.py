"""Evaluation like a paper's results section: what a model gets right, how far to trust it, where.

`evaluate_classifier` scores a trained `Classifier` on the test split and writes `metrics.json`,
`per_class.csv`, `confusion_matrix.png`, `reliability.png`, `calibration.json` and a readable
`report.md` into one directory:

- headline numbers (accuracy, top-k accuracy, macro/weighted F1) and a per-class table;
- calibration: a temperature fitted on the calibration split, ECE and NLL on test before/after;
- conformal prediction sets fitted on the temperature-scaled calibration probabilities, with the
  empirical test coverage next to the 1 - alpha target;
- slices by archive, abstract length and year, so an average cannot hide a weak subgroup;
- behavioural tests (`evaluate.behaviour`): invariance to harmless edits, directional checks.

`Calibration` (temperature + conformal predictor) is what serving applies to raw logits; it and
this module's import-time dependencies are numpy-only (pandas, matplotlib and the behavioural tests
load lazily inside `evaluate_classifier`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paperops.data.datamodule import EmptySplitError
from paperops.evaluate.behaviour import run_behavioural
from paperops.evaluate.config import EvalConfig
from paperops.evaluate.metrics import classification_metrics
from paperops.evaluate.report import ARTIFACTS, _per_class_csv, plot_confusion_matrix, render_report
from paperops.evaluate.slices import slice_metrics
from paperops.io import atomic_write_text
from paperops.uncertainty.calibrate import (
    check_labels,
    expected_calibration_error,
    nll,
    plot_reliability,
    softmax,
)
from paperops.uncertainty.calibration import finite_logits, fit_calibration
from paperops.uncertainty.conformal import coverage_report

if TYPE_CHECKING:
    from paperops.data.datamodule import TextSplit
    from paperops.models.base import Classifier


def _require(splits: Mapping[str, TextSplit], name: str) -> TextSplit:
    if name not in splits:
        raise ValueError(f"evaluation needs the {name!r} split; got splits {sorted(splits)}")
    split = splits[name]
    if len(split) == 0:
        raise EmptySplitError(
            f"the {name!r} split is empty: nothing to evaluate on; re-run `paperops data "
            "prepare` with fractions that give it some papers"
        )
    return split


def _check_label_order(split: TextSplit, labels: Sequence[str]) -> None:
    """y indexes the data's labels.json; a model with another label order would be scored
    against the wrong columns without a single error, so compare with the frame's label names."""
    if "label" not in split.frame or not len(split):
        return
    named = np.asarray(labels, dtype=object)[np.asarray(split.y)]
    if not (named == split.frame["label"].to_numpy(dtype=object)).all():
        raise ValueError(
            f"the {split.name!r} split's label indices do not match the model's label order; "
            "evaluate a model on the data (labels.json) it was trained on"
        )


def _model_logits(model: Classifier, split: TextSplit, k: int) -> np.ndarray:
    logits = np.asarray(model.logits(split.texts), dtype=np.float64)
    if logits.shape != (len(split), k):
        raise ValueError(
            f"model returned logits of shape {logits.shape} on the {split.name!r} split; "
            f"expected ({len(split)}, {k}) for its {k} labels"
        )
    return logits


def evaluate_classifier(
    model: Classifier,
    splits: Mapping[str, TextSplit],
    out_dir: Path,
    cfg: EvalConfig,
    *,
    run_name: str,
) -> dict[str, Any]:
    """Evaluate on "test" with calibration fitted on "calibration"; write the report files.

    Logits are computed once per split. Returns the metrics dict written to metrics.json; its
    "artifacts" entry lists the files written (relative to out_dir; see `artifact_paths`). The
    "train" split, when given, supplies directional-test vocabulary for labels without curated
    terms.
    """

    cal, test = _require(splits, "calibration"), _require(splits, "test")
    labels = list(model.labels)
    k = len(labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    cal_logits, test_raw = _model_logits(model, cal, k), _model_logits(model, test, k)
    cal_y = check_labels(cal.y, len(cal), k, name="calibration labels")
    y = check_labels(test.y, len(test), k, name="test labels")
    _check_label_order(cal, labels)
    _check_label_order(test, labels)
    calibration = fit_calibration(cal_logits, cal_y, cfg)
    t = calibration.temperature.temperature

    z = finite_logits(test_raw)
    before = softmax(z)
    after, sets = calibration.apply(test_raw)
    sizes = np.array([len(s) for s in sets])
    coverage = coverage_report(sets, y, k)
    hist = np.bincount(sizes, minlength=k + 1)

    headline = classification_metrics(after, y, labels, cfg.top_k)
    metrics: dict[str, Any] = {
        "run_name": run_name,
        "model_family": getattr(model, "family", type(model).__name__),
        "n_test": len(test),
        "n_calibration": len(cal),
        "labels": labels,
        **{key: v for key, v in headline.items() if key not in ("per_class", "confusion_matrix")},
        "per_class": headline["per_class"],
        "temperature": t,
        "ece_before": expected_calibration_error(before, y, cfg.n_bins),
        "ece_after": expected_calibration_error(after, y, cfg.n_bins),
        "nll_before": nll(z, y),
        "nll_after": nll(z, y, t),
        "n_unreachable_test": int((~np.isfinite(test_raw[np.arange(len(y)), y])).sum()),
        "conformal": {
            "method": cfg.conformal_method,
            "alpha": cfg.alpha,
            "target": 1 - cfg.alpha,
            "coverage": coverage["coverage"],
            "mean_set_size": coverage["mean_set_size"],
            "mondrian": bool(calibration.conformal.mondrian),
            "per_class_coverage": dict(zip(labels, coverage["per_class_coverage"], strict=True)),
            "min_class_coverage": coverage["min_class_coverage"],
            "empty_fraction": float((sizes == 0).mean()),
            "randomized": bool(cfg.conformal_randomized),
            "allow_empty": bool(cfg.conformal_allow_empty),
            "set_size_histogram": {str(s): int(c) for s, c in enumerate(hist) if c},
            "qhat": calibration.conformal.qhat,
            "n_cal": calibration.conformal.n_cal,
        },
        "confusion_matrix": headline["confusion_matrix"],
        "slices": slice_metrics(test.frame, after, y, labels, cfg),
        "behavioural": run_behavioural(model, test, splits.get("train"), cfg, t),
        "calibration": calibration.to_dict(),
        "config": asdict(cfg),
        "artifacts": list(ARTIFACTS),
    }

    atomic_write_text(out_dir / "per_class.csv", _per_class_csv(metrics["per_class"]))
    plot_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]), labels, out_dir / "confusion_matrix.png"
    )
    plot_reliability(before, after, y, out_dir / "reliability.png", n_bins=cfg.n_bins)
    calibration.save(out_dir / "calibration.json")
    atomic_write_text(out_dir / "report.md", render_report(metrics))
    # allow_nan=False: a NaN would make the file unreadable for strict JSON parsers; fail loudly.
    text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    atomic_write_text(out_dir / "metrics.json", text)  # last: its presence means a complete run
    return metrics
