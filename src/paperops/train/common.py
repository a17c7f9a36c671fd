"""What every training run shares: its result, DDP rank-zero checks, the tracked MLflow run
(with Lightning loggers attached) and the provenance written into training.json.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paperops.data.datamodule import data_hash
from paperops.tracking import runs as tracking


@dataclass
class TrainResult:
    bundle_dir: Path
    family: str
    val_metrics: dict[str, float]
    train_seconds: float
    run_id: str | None = None
    decision: dict[str, Any] | None = None
    fit_summary: dict[str, Any] = field(default_factory=dict)


def is_global_rank_zero() -> bool:
    """True in the process that owns outputs: rank 0 under torchrun/Lightning DDP, or no DDP."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


@contextlib.contextmanager
def tracked_run(cfg: DictConfig, data_dir: Path, *, track: bool) -> Iterator[tuple[Any, list[Any]]]:
    """(MLflow run handle, Lightning loggers) for `cfg.train.run_name`, or (None, []) untracked.

    The run ends FAILED if the body raises (tracking.start_run records it)."""
    if not track:
        yield None, []
        return

    run_name = str(cfg.train.run_name)
    with tracking.start_run(
        cfg.logger,
        run_name=run_name,
        config=cfg,
        tags={"family": str(cfg.model.family)},
        data_dir=data_dir,
    ) as run:
        loggers = tracking.lightning_loggers(cfg.logger, run.run_id, run_name=run_name)
        try:
            tracking.log_params_to_wandb(loggers, cfg)
            yield run, loggers
        finally:
            tracking.finish_wandb(loggers)


def run_info(cfg: DictConfig, run: Any, data_dir: Path, *, seed: int) -> dict[str, Any]:
    """The provenance part of training.json: which run, which data, which config."""
    return {
        "family": str(cfg.model.family),
        "run_name": str(cfg.train.run_name),
        "run_id": run.run_id if run is not None else None,
        "tracking_uri": str(cfg.logger.tracking_uri) if run is not None else None,
        "processed_dir": str(data_dir),
        "data_hash": data_hash(data_dir),
        "seed": seed,
        "config": _plain(cfg),
    }
