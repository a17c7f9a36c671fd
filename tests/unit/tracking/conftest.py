"""Fixtures for the tracking tests: one real SQLite MLflow store per module, a tiny bundle, one
logged model whose run candidates are registered from, a fresh registered-model name per test,
and the `paperops models` CLI bound to the store. Helpers are imported by the test modules."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from paperops.cli.models import models_app
from paperops.data.datamodule import load_splits_for_model
from paperops.models.tfidf import TfidfClassifier, TfidfConfig
from paperops.tracking.promotion import register_candidate
from paperops.tracking.registry import CHAMPION, Decision
from paperops.tracking.runs import log_model_bundle, resolve_tracking_uri, setup_mlflow, start_run

CONFIG = {"seed": 42, "model": {"family": "tfidf", "min_df": 1}}
_names = itertools.count()


def logger_cfg(root: Path, **extra: Any) -> dict[str, Any]:
    """A logger config whose SQLite store and artifacts live under `root`."""
    return {
        "name": "mlflow",
        "tracking_uri": f"sqlite:///{root}/mlruns/mlflow.db",
        "artifact_location": str(root / "mlruns" / "artifacts"),
        "experiment_name": "paperops-test",
        "registered_model": "paperops-classifier",
        "wandb": None,
        **extra,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store per module: creating MLflow's SQLite schema costs seconds."""
    cfg = logger_cfg(tmp_path_factory.mktemp("tracking"))
    setup_mlflow(cfg)
    return cfg


@pytest.fixture(scope="module")
def bundle(_prepared_once: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained tfidf bundle with a calibration.json (T=2)."""
    splits, labels = load_splits_for_model(_prepared_once, ["train"])
    tr = splits["train"]
    model = TfidfClassifier(labels, TfidfConfig(min_df=1, classifier="logreg"))
    model.fit(tr.texts, [labels[i] for i in tr.y])
    out = model.save(tmp_path_factory.mktemp("bundle") / "tfidf")
    (out / "calibration.json").write_text(
        json.dumps({"temperature": {"kind": "temperature", "temperature": 2.0}, "conformal": {}})
    )
    return out


@pytest.fixture(scope="module")
def logged(store, bundle: Path, _prepared_once: Path) -> tuple[str, str]:
    """One logged model (run id, model URI); candidates below register it with different scores."""
    with start_run(store, run_name="tfidf", config=CONFIG, data_dir=_prepared_once) as run:
        run.log_metrics({"val_macro_f1": 0.8, "val_accuracy": 0.85})
        uri = log_model_bundle(run, bundle)
    return run.run_id, uri


@pytest.fixture
def name() -> str:
    """A fresh registered model per test, so tests share the store but not the champion."""
    return f"test-model-{next(_names)}"


def candidate(store, logged, name: str, score: float, **kw: Any) -> Decision:
    run_id, uri = logged
    return register_candidate(store, run_id=run_id, model_uri=uri, score=score, name=name, **kw)


def champion_version(store, name: str) -> str:
    uri = resolve_tracking_uri(store["tracking_uri"])
    return str(MlflowClient(uri, uri).get_model_version_by_alias(name, CHAMPION).version)


@pytest.fixture
def cli(store) -> Any:
    app = typer.Typer()
    app.add_typer(models_app, name="models")
    overrides = [
        f"logger.tracking_uri={store['tracking_uri']}",
        f"logger.artifact_location={store['artifact_location']}",
        f"logger.experiment_name={store['experiment_name']}",
    ]
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, ["models", *args, *overrides])

    return invoke
