"""Evaluation: `evaluate_bundle` scores any bundle on its test split and dispatches on the task
(classifier: `evaluate.classifier`; language model: `evaluate.lm`), then records the test
metrics and the report in the bundle's MLflow training run.

May import: tracking, inference, models, uncertainty, data and the foundation modules. The CLI,
the DVC stage and the benchmarks all call `evaluate_bundle`, so they run the same code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paperops.data.datamodule import data_hash, load_splits_for_model, read_labels
from paperops.evaluate.classifier import evaluate_classifier
from paperops.evaluate.config import EvalConfig
from paperops.models.base import (
    LANGUAGE_MODEL,
    bundle_task,
    load_classifier,
    training_info,
)
from paperops.tracking.runs import log_evaluation

log = logging.getLogger(__name__)


def evaluate_bundle(
    cfg: DictConfig, model_dir: Path, report_dir: Path, *, log_to_mlflow: bool = True
) -> dict[str, Any]:
    """Evaluate a bundle on the test split it was trained for (same caps and seed)."""

    model_dir, report_dir = Path(model_dir), Path(report_dir)
    if bundle_task(model_dir) == LANGUAGE_MODEL:  # a clear error before any data is read
        # deferred: pulls lightning, torch
        from paperops.evaluate.lm import evaluate_lm

        return evaluate_lm(cfg, model_dir, report_dir, log_to_mlflow=log_to_mlflow)
    info = training_info(model_dir)
    processed = Path(cfg.train.processed_dir)
    labels, _ = read_labels(processed)
    if info.get("data_hash") and info["data_hash"] != data_hash(processed):
        log.warning(
            "%s was trained on different data (hash %s) than %s: the metrics describe this data",
            model_dir,
            info["data_hash"][:12],
            processed,
        )
    max_rows = info.get("max_rows") or OmegaConf.to_container(cfg.train.max_rows)
    seed = int(info.get("seed", cfg.seed))
    model = load_classifier(model_dir, expected_labels=labels)
    _prepare_for_inference(model, info)
    splits, _ = load_splits_for_model(
        processed, ("train", "calibration", "test"), max_rows=max_rows, seed=seed
    )
    ecfg = EvalConfig.from_config(OmegaConf.to_container(cfg.evaluate, resolve=True))
    run_name = str(info.get("run_name") or model_dir.name)
    metrics = evaluate_classifier(model, splits, report_dir, ecfg, run_name=run_name)
    if log_to_mlflow and info.get("run_id"):
        log_evaluation(cfg, info["run_id"], metrics, report_dir)
    return metrics


def _prepare_for_inference(model: Any, info: dict[str, Any]) -> None:
    """Reuse the training run's embedding cache, and use a GPU when there is one."""
    cache_dir = ((info.get("config") or {}).get("model") or {}).get("cache_dir")
    if getattr(model, "family", None) == "embedding" and cache_dir:
        model.cache_dir = Path(cache_dir)
    if hasattr(model, "to"):
        import torch

        if torch.cuda.is_available():
            model.to("cuda")
