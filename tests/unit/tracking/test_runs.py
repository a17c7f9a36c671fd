"""Experiment tracking against a real SQLite MLflow store in a temp dir (no mocks, no network)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from paperops import __version__
from paperops.data.datamodule import data_hash
from paperops.models.base import load_classifier
from paperops.tracking.runs import (
    git_info,
    lightning_loggers,
    log_model_bundle,
    log_params_to_wandb,
    resolve_tracking_uri,
    start_run,
)
from paperops.uncertainty.calibrate import softmax

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def client(cfg: dict[str, Any]) -> MlflowClient:
    uri = resolve_tracking_uri(cfg["tracking_uri"])
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


CONFIG = {
    "seed": 42,
    "model": {"family": "tfidf", "ngram_range": [1, 2], "C": 1.0},
    "train": {"run_name": "tfidf", "notes": "x" * 7000},
}


def test_run_logs_config_params_provenance_and_metrics(store, prepared_dir: Path) -> None:
    with start_run(
        store,
        run_name="tfidf-test",
        config=OmegaConf.create(CONFIG),
        tags={"stage": "unit"},
        data_dir=prepared_dir,
    ) as run:
        for step, loss in enumerate([0.9, 0.5, 0.3]):
            run.log_metrics({"train_loss": loss, "lr": np.float32(0.1)}, step=step)
        run.log_dict({"a": 1}, "extra/info.json")
        run.set_tags({"phase": "done"})
        assert mlflow.active_run().info.run_id == run.run_id

    assert mlflow.active_run() is None
    c = client(store)
    r = c.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "tfidf-test"
    # the resolved config, as an artifact and as dotted params (long values truncated)
    local = c.download_artifacts(run.run_id, "config.yaml")
    assert yaml.safe_load(Path(local).read_text()) == CONFIG
    params = r.data.params
    assert params["model.family"] == "tfidf"
    assert params["model.ngram_range"] == "[1, 2]"
    assert params["seed"] == "42"
    assert len(params["train.notes"]) == 6000
    # provenance
    tags = r.data.tags
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_sha"])  # the tests run inside the checkout
    assert tags["git_dirty"] in ("true", "false")
    assert tags["data_hash"] == data_hash(prepared_dir)
    assert tags["paperops_version"] == __version__
    assert tags["family"] == "tfidf"
    assert tags["stage"] == "unit" and tags["phase"] == "done"
    # per-step metrics
    history = c.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert {a.path for a in c.list_artifacts(run.run_id)} >= {"config.yaml", "extra"}
    # artifacts land under the configured location, as an absolute file URI
    exp = c.get_experiment(r.info.experiment_id)
    assert exp.artifact_location == Path(store["artifact_location"]).resolve().as_uri()


def test_failing_body_marks_run_failed_and_reraises(store) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        start_run(store, run_name="broken", config=CONFIG) as run,
    ):
        run.log_metrics({"train_loss": 1.0}, step=0)
        raise RuntimeError("boom")
    assert mlflow.active_run() is None
    assert client(store).get_run(run.run_id).info.status == "FAILED"


def test_non_numeric_metric_is_an_error(store) -> None:
    with (
        pytest.raises(ValueError, match="not a number"),
        start_run(store, run_name="bad-metric", config=CONFIG) as run,
    ):
        run.log_metrics({"acc": "high"})
    assert client(store).get_run(run.run_id).info.status == "FAILED"


def test_git_info_outside_a_repo_is_unknown(tmp_path: Path) -> None:
    assert git_info(tmp_path) == {"git_sha": "unknown", "git_dirty": "unknown"}


def test_relative_sqlite_uri_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlruns/mlflow.db") == (
        f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    )
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_lightning_mlflow_logger_writes_into_the_same_run(store) -> None:
    with start_run(store, run_name="lightning", config=CONFIG) as run:
        loggers = lightning_loggers(store, run.run_id, run_name="lightning")
        assert len(loggers) == 1  # no W&B configured
        (mlf,) = loggers
        assert mlf.run_id == run.run_id
        mlf.log_metrics({"val_macro_f1": 0.5}, step=1)
        mlf.log_metrics({"val_macro_f1": 0.75}, step=2)
        # params start_run logged are not re-logged (MLflow would refuse a changed value)
        mlf.log_hyperparams({"seed": 7, "lr": 0.01, "model": {"family": "x", "hidden": 64}})
        mlf.finalize("success")  # Lightning calls this at the end of fit: the run stays open
        assert client(store).get_run(run.run_id).info.status == "RUNNING"
    c = client(store)
    r = c.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert [(m.step, m.value) for m in c.get_metric_history(run.run_id, "val_macro_f1")] == [
        (1, 0.5),
        (2, 0.75),
    ]
    assert r.data.params["seed"] == "42" and r.data.params["lr"] == "0.01"
    assert r.data.params["model.family"] == "tfidf" and r.data.params["model.hidden"] == "64"
    assert len(c.search_runs([r.info.experiment_id], "run_name = 'lightning'")) == 1


def test_wandb_offline_logger_writes_a_local_run(store, tmp_path: Path, monkeypatch) -> None:
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
    }.items():
        monkeypatch.setenv(key, value)  # restored afterwards even though lightning_loggers sets it
    wandb_dir = tmp_path / "wandb"
    cfg = {**store, "wandb": {"project": "paperops-test", "mode": "offline", "dir": str(wandb_dir)}}
    with start_run(cfg, run_name="wandb", config=CONFIG) as run:
        loggers = lightning_loggers(cfg, run.run_id, run_name="wandb")
        assert len(loggers) == 2
        wb = loggers[1]
        log_params_to_wandb(loggers, OmegaConf.create(CONFIG))
        wb.log_metrics({"train_loss": 0.4}, step=0)
        assert wb.experiment.config["model"]["family"] == "tfidf"
        assert wb.experiment.config["mlflow_run_id"] == run.run_id
        wb.experiment.finish()
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].rglob("*.wandb"))


def test_logged_bundle_loads_as_pyfunc_and_predicts_calibrated_probs(
    store, bundle: Path, _prepared_once: Path
) -> None:
    with start_run(store, run_name="model", config=CONFIG) as run:
        uri = log_model_bundle(run, bundle)
    assert uri.startswith("models:/")

    test = pd.read_parquet(_prepared_once / "test.parquet")
    pyfunc = mlflow.pyfunc.load_model(uri)
    out = pyfunc.predict(test[["title", "abstract"]])

    clf = load_classifier(bundle)
    texts = [f"{t.strip()}\n{a.strip()}" for t, a in zip(test.title, test.abstract, strict=True)]
    expected = softmax(clf.logits(texts), 2.0)  # T from calibration.json
    probs = out[[f"prob_{lab}" for lab in clf.labels]].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert list(out["label"]) == [clf.labels[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(out["confidence"], expected.max(1))
    assert (out["label"] == test["label"].to_numpy()).mean() >= 0.9

    # models-from-code: the model is source + bundle files, nothing cloudpickled
    local = Path(mlflow.artifacts.download_artifacts(uri))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in flavor
    assert not list(local.rglob("*.pkl"))
    assert (local / flavor["artifacts"]["bundle"]["path"] / "model.json").is_file()
    assert mlmodel["signature"]["inputs"]


def test_missing_input_column_is_a_clear_error(store, bundle: Path) -> None:
    with start_run(store, run_name="model-bad-input", config=CONFIG) as run:
        uri = log_model_bundle(run, bundle)
    from paperops.tracking.pyfunc_classifier import BundleModel

    model = BundleModel()
    model.classifier, model.temperature = load_classifier(bundle), 1.0
    with pytest.raises(ValueError, match="abstract"):
        model.predict(None, pd.DataFrame({"title": ["x"]}))
    assert mlflow.pyfunc.load_model(uri).predict(pd.DataFrame(columns=["title", "abstract"])).empty


def test_a_model_can_be_logged_after_the_run_closed(store, bundle: Path) -> None:
    with start_run(store, run_name="late-model", config=CONFIG) as run:
        run.log_metrics({"val_macro_f1": 0.9})
    uri = log_model_bundle(run, bundle)
    assert mlflow.active_run() is None
    assert client(store).get_run(run.run_id).info.status == "FINISHED"
    out = mlflow.pyfunc.load_model(uri).predict(
        pd.DataFrame({"title": ["Galaxies Dark Matter Halos"], "abstract": ["we observe"]})
    )
    assert out["label"].tolist() == ["astro-ph"]


def test_mlflow_tracking_uri_env_points_paperops_at_a_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLFLOW_TRACKING_URI, as every MLflow tool reads it, is the default store; an explicit
    logger.tracking_uri still wins. With a server, a local artifact path is not imposed on the
    experiment (the server proxies artifacts to its own root)."""
    from paperops.config import load_config
    from paperops.tracking.runs import _artifact_location, tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    cfg = load_config([])
    assert tracking_uri(cfg.logger) == "http://127.0.0.1:5999"
    assert _artifact_location(cfg.logger) is None
    cfg = load_config(["logger.tracking_uri=sqlite:///x/mlflow.db"])
    assert tracking_uri(cfg.logger).endswith("/x/mlflow.db")
    assert str(_artifact_location(cfg.logger)).startswith("file:///")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(load_config([]).logger).endswith("/mlruns/mlflow.db")
