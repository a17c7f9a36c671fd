"""`paperops train`: one function from a composed config to a registered, calibrated bundle.

Reads like the pipeline it is: seed -> data -> fit -> validate -> calibrate -> save bundle
(atomically) -> track -> register behind the champion gate. Families differ only in how they
are built and fitted (`build_classifier`, `fit_classifier`); everything after is shared.
Under DDP every rank runs this file (Lightning re-executes the command for ranks > 0); only
global rank 0 tracks, saves and registers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from paperops.data.datamodule import TextSplit, load_splits_for_model, read_labels
from paperops.evaluate.config import EvalConfig
from paperops.export.encoder import ensure_encoder_graph
from paperops.io import atomic_dir, atomic_write_text
from paperops.models.base import (
    CALIBRATION_FILE,
    SKLEARN_FAMILIES,
    TRAINING_FILE,
    Classifier,
    family_class,
)
from paperops.models.multilabel_io import HEAD_DIR, save_head
from paperops.models.process import seed_everything
from paperops.tracking import promotion
from paperops.tracking import runs as tracking
from paperops.train.common import TrainResult, _plain, is_global_rank_zero, run_info, tracked_run
from paperops.train.crosslists import fit_for_bundle
from paperops.uncertainty.calibration import fit_calibration

log = logging.getLogger(__name__)


def build_classifier(model_cfg: Mapping[str, Any], labels: list[str]) -> Any:
    """The family's classifier object from `model.*` (the family key picks the class)."""
    params = {k: v for k, v in dict(_plain(model_cfg)).items() if k != "family"}
    family = model_cfg["family"]
    cls = family_class(family)
    if family == "tfidf":
        # deferred: pulls sklearn, skops
        from paperops.models.tfidf import TfidfConfig

        return cls(labels=labels, config=TfidfConfig(**params))
    config_cls = {
        "embedding": "EmbeddingConfig",
        "finetune": "FinetuneConfig",
        "hybrid": "HybridConfig",
    }[family]
    module = __import__(cls.__module__, fromlist=[config_cls])
    return cls(labels, getattr(module, config_cls).from_dict(params))


def fit_classifier(
    model: Any,
    splits: Mapping[str, TextSplit],
    cfg: DictConfig,
    *,
    loggers: list[Any],
    work_dir: Path,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Fit in place; returns the family's fit summary (best epoch, seconds, ...)."""
    train, val = splits["train"], splits["val"]
    summary: dict[str, Any] = {}
    if getattr(model, "needs_encoder_graph", False):
        t0 = time.perf_counter()
        root = model.config.graph_dir or work_dir / "encoder_graphs"
        step = max(1, len(train.texts) // 256)  # spread over the split, not its first rows
        graph = ensure_encoder_graph(
            model.config.encoder, model.config.max_seq_length, Path(root), train.texts[::step]
        )
        model.attach_encoder(graph)
        summary["encoder_graph_seconds"] = time.perf_counter() - t0
    if model.family in SKLEARN_FAMILIES:
        t0 = time.perf_counter()
        model.fit(train.texts, [model.labels[i] for i in train.y])
        return summary | {"train_seconds": time.perf_counter() - t0}
    model.fit(
        train,
        val,
        trainer_cfg=_plain(cfg.trainer),
        loggers=loggers,
        work_dir=work_dir,
        seed=int(cfg.seed),
        callbacks=callbacks or [],
    )
    return dict(getattr(model, "fit_summary", {}))


def split_metrics(model: Classifier, split: TextSplit, prefix: str) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = model.logits(split.texts).argmax(axis=1)
    return {
        f"{prefix}_accuracy": float(accuracy_score(split.y, pred)),
        f"{prefix}_macro_f1": float(
            f1_score(split.y, pred, average="macro", labels=range(len(model.labels)))
        ),
    }


def _track_and_register(
    cfg: DictConfig,
    run: Any,
    bundle_dir: Path,
    info: dict[str, Any],
    *,
    register: bool,
) -> dict[str, Any] | None:
    """Log the bundle to the run, then register it; the gate decides whether it is champion."""

    # after the per-epoch points: the score of the model actually kept (the best checkpoint)
    val_metrics = info["val_metrics"]
    step = int(info["fit_summary"].get("epochs_run") or 0)
    run.log_metrics({**val_metrics, "train_seconds": info["train_seconds"]}, step=step)
    model_uri = tracking.log_model_bundle(run, bundle_dir)
    if not register:
        return None
    decision = promotion.register_candidate(
        cfg.logger,
        run_id=run.run_id,
        model_uri=model_uri,
        score=val_metrics["val_macro_f1"],
        metric="val_macro_f1",
        tags={
            "family": str(cfg.model.family),
            "data_hash": info["data_hash"],
            "label_level": info["label_level"],
        },
    )
    d = asdict(decision)
    run.set_tags(
        {"registry.version": str(decision.version), "registry.promoted": str(decision.promoted)}
    )
    log.info("registry: %s", decision.reason)
    return d


def train_classifier(cfg: DictConfig, *, callbacks: list[Any] | None = None) -> TrainResult | None:
    """Train the classifier family `cfg.model.family` on `cfg.train.processed_dir`; None on DDP
    ranks other than 0."""

    t_start = time.perf_counter()
    seed_everything(int(cfg.seed))
    tcfg = cfg.train
    processed = Path(tcfg.processed_dir)
    max_rows = dict(_plain(tcfg.max_rows) or {})
    splits, labels = load_splits_for_model(
        processed, ("train", "val", "calibration"), max_rows=max_rows, seed=int(cfg.seed)
    )
    log.info(
        "training %s on %s: %s",
        cfg.model.family,
        processed,
        ", ".join(f"{k}={len(v):,}" for k, v in splits.items()),
    )
    model = build_classifier(cfg.model, labels)
    rank_zero = is_global_rank_zero()
    track = bool(tcfg.track) and rank_zero
    out_dir = Path(tcfg.output_dir)
    work_dir = Path(cfg.paths.work) / str(tcfg.run_name)

    with tracked_run(cfg, processed, track=track) as (run, loggers):
        fit_summary = fit_classifier(
            model, splits, cfg, loggers=loggers, work_dir=work_dir, callbacks=callbacks
        )
        if not rank_zero or fit_summary.get("global_rank", 0) != 0:
            return None  # DDP: every rank returns from fit; only global rank 0 owns outputs
        train_seconds = float(fit_summary.get("train_seconds", time.perf_counter() - t_start))
        val_metrics = split_metrics(model, splits["val"], "val")
        log.info("validation: %s", json.dumps({k: round(v, 4) for k, v in val_metrics.items()}))
        cal = splits["calibration"]
        calibration = fit_calibration(
            model.logits(cal.texts), cal.y, EvalConfig.from_config(_plain(cfg.evaluate))
        )
        data_meta = read_labels(processed)[1]
        head, cross_lists = None, None
        if (xl := _plain(tcfg.get("cross_lists"))) and xl.get("enabled"):
            head, cross_lists = fit_for_bundle(xl, splits, data_meta, model)
        info = {
            **run_info(cfg, run, processed, seed=int(cfg.seed)),
            "label_level": str(data_meta.get("label_level", "custom")),
            "max_rows": max_rows,
            "rows": {k: len(v) for k, v in splits.items()},
            "val_metrics": val_metrics,
            "train_seconds": train_seconds,
            "fit_summary": fit_summary,
            **({"cross_lists": cross_lists} if cross_lists is not None else {}),
        }
        with atomic_dir(out_dir) as tmp:
            model.save(tmp)
            if head is not None:  # an optional part: <bundle>/crosslists/ (load_cross_lists)
                save_head(head, tmp / HEAD_DIR)
            atomic_write_text(tmp / CALIBRATION_FILE, json.dumps(calibration.to_dict(), indent=2))
            atomic_write_text(tmp / TRAINING_FILE, json.dumps(info, indent=2, default=str) + "\n")
        log.info("saved the bundle to %s", out_dir)
        result = TrainResult(
            out_dir, str(cfg.model.family), val_metrics, train_seconds, fit_summary=fit_summary
        )
        if run is not None:
            result.run_id = run.run_id
            result.decision = _track_and_register(
                cfg, run, out_dir, info, register=bool(tcfg.register)
            )
        return result
