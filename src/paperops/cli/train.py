"""`paperops train`: one training run (or an Optuna study with --multirun)."""

from __future__ import annotations

from typing import Annotated

import typer

from paperops.cli.common import Overrides, compose, fail
from paperops.config import ConfigError
from paperops.models.base import LANGUAGE_MODEL, task_of_family


def train_cmd(
    overrides: Overrides = None,
    multirun: Annotated[
        bool,
        typer.Option(
            "--multirun",
            "-m",
            help="Run the Optuna study named by hparams_search=... instead of one training run.",
        ),
    ] = False,
) -> None:
    """Train a model (experiment=tfidf|embedding|finetune|lm_mqp|lm_arxiv), track it, gate the
    champion."""
    from paperops.data.datamodule import EmptySplitError
    from paperops.models.base import ModelLoadError

    if multirun:
        from paperops.train.sweep import SweepConfigError, run_sweep

        compose(overrides)  # fail fast on a bad override
        try:
            res = run_sweep(overrides or [])
        except (SweepConfigError, ConfigError) as e:
            raise fail(str(e)) from None
        typer.echo(
            f"study {res.study_name} ({res.storage}): {res.n_trials} trials, {res.n_pruned} "
            f"pruned; best {res.best_value:.4f} with {res.best_params}\n"
            f"  summary: {res.summary_path}"
        )
        return
    from paperops.train import train

    cfg = compose(overrides)
    try:
        result = train(cfg)
    except (FileNotFoundError, EmptySplitError, ModelLoadError, ValueError) as e:
        raise fail(str(e)) from None
    if result is None:  # DDP rank > 0: rank 0 reports
        return
    v = result.val_metrics
    scores = (
        f"loss {v['val_loss']:.4f}, perplexity {v['val_perplexity']:.2f}"
        if task_of_family(result.family) == LANGUAGE_MODEL
        else f"accuracy {v['val_accuracy']:.4f}, macro-F1 {v['val_macro_f1']:.4f}"
    )
    typer.echo(
        f"trained {result.family} in {result.train_seconds:.1f} s -> {result.bundle_dir}\n"
        f"  validation: {scores}"
    )
    if result.run_id:
        typer.echo(f"  mlflow run: {result.run_id} ({cfg.logger.tracking_uri})")
    if result.decision:
        d = result.decision
        typer.echo(f"  registry: {d['name']} v{d['version']}: {d['reason']}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
