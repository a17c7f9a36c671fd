"""Training: one entry point, `train(cfg)`, for every task; it dispatches on the model's task.

May import: export (the hybrid family's int8 encoder graph), evaluate, tracking, inference,
models, uncertainty, data and the foundation modules.
Classifier families train in `train.classifier`, the language model in `train.lm` and Optuna
studies run in `train.sweep`; what they share (seeding, tracked runs, results) is `train.common`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from paperops.models.base import LANGUAGE_MODEL, task_of_family
from paperops.train.classifier import train_classifier
from paperops.train.common import TrainResult


def train(cfg: DictConfig, *, callbacks: list[Any] | None = None) -> TrainResult | None:
    """Train `cfg.model`, track and register it; None on DDP ranks other than 0."""
    if task_of_family(cfg.model.family) == LANGUAGE_MODEL:
        from paperops.train.lm import train_lm  # deferred: pulls torch + transformers

        return train_lm(cfg, callbacks=callbacks)

    return train_classifier(cfg, callbacks=callbacks)
