"""`paperops train -m hparams_search=NAME`: an Optuna study over `paperops train`.

Each trial is an ordinary training run (its own MLflow run, tagged with the study and trial)
composed from the same config plus the trial's overrides, so a trial can be re-run exactly with
`paperops train <overrides>`. The study lives in a database (SQLite by default, one worker):
several processes or machines pointed at one PostgreSQL URL work on the same study and share its
`n_trials` budget (sweep_study.py: safe creation, the shared budget, dead workers' trials
retried). Neural trials report the monitored metric after every validation epoch, and the pruner
stops unpromising ones early.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paperops.config import load_config
from paperops.dburl import safe_url
from paperops.io import atomic_write_text
from paperops.models.base import SKLEARN_FAMILIES
from paperops.train import train
from paperops.train.sweep_study import (
    Heartbeat,
    SweepConfigError,
    SweepStorageError,
    open_study,
    run_trials,
)

log = logging.getLogger(__name__)

__all__ = ["SweepConfigError", "SweepResult", "SweepStorageError", "run_sweep"]


@dataclass
class SweepResult:
    study_name: str
    storage: str
    best_value: float
    best_params: dict[str, Any]
    n_trials: int
    n_pruned: int
    summary_path: Path


def suggest(trial: Any, name: str, spec: Mapping[str, Any]) -> Any:
    """One value for `name` from a spec {type: float|int|categorical, low, high, log, choices}."""
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(
            name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
        )
    if kind == "int":
        return trial.suggest_int(
            name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
        )
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise SweepConfigError(
        f"hparams_search.params.{name}: type must be float, int or categorical; got {kind!r}"
    )


def _sampler(spec: Mapping[str, Any], seeded: bool = True) -> Any:
    """The configured sampler; unseeded for a worker joining an existing study (the same seed
    in two workers proposes the same parameters in both)."""
    import optuna

    name = spec.get("name", "tpe")
    seed = spec.get("seed") if seeded else None
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SweepConfigError(f"hparams_search.sampler.name must be tpe or random; got {name!r}")


def _pruner(spec: Mapping[str, Any]) -> Any:
    import optuna

    name = spec.get("name", "median")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("n_startup_trials", 3)),
            n_warmup_steps=int(spec.get("n_warmup_steps", 1)),
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepConfigError(f"hparams_search.pruner.name must be median or none; got {name!r}")


def _ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the database file but not its directory."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def pruning_callback(trial: Any, monitor: str) -> Any:
    """A Lightning callback that reports `monitor` each epoch and prunes the trial when told."""
    import lightning as L
    import optuna

    class OptunaPruning(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking or monitor not in trainer.callback_metrics:
                return
            epoch = trainer.current_epoch
            trial.report(float(trainer.callback_metrics[monitor]), step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    return OptunaPruning()


def run_sweep(overrides: Sequence[str]) -> SweepResult:
    """Create or resume the study named in hparams_search and run its trials here."""
    import optuna

    cfg = load_config(overrides)
    hs = cfg.get("hparams_search")
    if not hs:
        raise SweepConfigError(
            "`-m` needs an hparams_search config, e.g. `paperops train -m "
            "hparams_search=embedding_optuna`"
        )
    params: dict[str, Any] = OmegaConf.to_container(hs.params, resolve=True)  # type: ignore[assignment]
    if not params:
        raise SweepConfigError("hparams_search.params is empty: nothing to search")
    storage = str(hs.storage)
    _ensure_sqlite_dir(storage)
    heartbeat = Heartbeat.from_config(hs.get("heartbeat", {}))
    sampler_spec = hs.get("sampler") or {}
    study = open_study(
        storage,
        str(hs.study_name),
        str(hs.direction),
        lambda seeded: _sampler(sampler_spec, seeded),
        _pruner(hs.get("pruner") or {}),
        heartbeat,
    )
    metric = str(hs.metric)
    base_dir = Path(cfg.paths.get("models", "models")) / "sweeps" / str(hs.study_name)

    def objective(trial: optuna.Trial) -> float:
        chosen = {name: suggest(trial, name, spec) for name, spec in params.items()}
        trial_overrides = [*overrides, *(f"{k}={_fmt(v)}" for k, v in chosen.items())]
        run_name = f"{hs.study_name}-trial{trial.number}"
        trial_overrides += [
            f"train.output_dir={base_dir / f'trial{trial.number}'}",
            f"train.run_name={run_name}",
        ]
        tcfg = load_config(trial_overrides)
        trial.set_user_attr("overrides", [f"{k}={_fmt(v)}" for k, v in chosen.items()])
        no_trainer = tcfg.model.family in SKLEARN_FAMILIES
        callbacks = [] if no_trainer else [pruning_callback(trial, metric)]
        result = train(tcfg, callbacks=callbacks)
        if result is None:  # a DDP rank other than 0
            raise optuna.TrialPruned("not rank 0")
        if result.run_id:
            trial.set_user_attr("mlflow_run_id", result.run_id)
        return float(result.val_metrics[metric])

    timeout = hs.get("timeout_s")
    run_trials(
        study,
        objective,
        int(hs.n_trials),
        timeout_s=float(timeout) if timeout else None,
        heartbeat=heartbeat,
        log=log,
    )
    return _summarise(study, cfg, safe_url(storage))


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _summarise(study: Any, cfg: DictConfig, storage: str) -> SweepResult:
    import optuna

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    if not done:
        raise RuntimeError(f"study {study.study_name}: no trial completed ({len(pruned)} pruned)")
    best = study.best_trial
    summary = {
        "study_name": study.study_name,
        "storage": storage,
        "direction": study.direction.name.lower(),
        "best_value": best.value,
        "best_params": best.params,
        "best_overrides": best.user_attrs.get("overrides", []),
        "best_mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "worker": t.user_attrs.get("worker"),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
            for t in trials
        ],
    }
    path = Path(cfg.paths.reports) / "sweeps" / study.study_name / "summary.json"
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return SweepResult(
        study.study_name,
        storage,
        float(best.value),
        dict(best.params),
        len(trials),
        len(pruned),
        path,
    )
