"""`paperops train` / `evaluate` / `models` end to end on tiny data with a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paperops.cli import app
from paperops.config import load_config
from paperops.models.base import load_classifier

runner = CliRunner()


def _overrides(tmp_path: Path, prepared_dir: Path, *extra: str) -> list[str]:
    return [
        f"train.processed_dir={prepared_dir}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
        f"logger.artifact_location={tmp_path}/mlruns/artifacts",
        f"paths.reports={tmp_path}/reports",
        f"paths.models={tmp_path}/models",
        f"paths.work={tmp_path}/outputs",
        f"train.output_dir={tmp_path}/models/tfidf",
        "model.min_df=1",
        "evaluate.alpha=0.2",  # the tiny calibration split has 6 rows: alpha 0.1 needs >= 9
        *extra,
    ]


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_train_evaluate_register_and_gate(tmp_path: Path, prepared_dir: Path) -> None:
    ov = _overrides(tmp_path, prepared_dir)
    out = _run("train", "experiment=tfidf", *ov)
    assert "registry: paperops-classifier v1" in out and "champion" in out
    bundle = tmp_path / "models" / "tfidf"
    info = json.loads((bundle / "training.json").read_text())
    assert info["run_id"] and info["val_metrics"]["val_macro_f1"] == 1.0
    assert (bundle / "calibration.json").is_file()
    model = load_classifier(bundle)
    assert model.family == "tfidf"

    out = _run("evaluate", "experiment=tfidf", *ov)
    report = tmp_path / "reports" / "tfidf"
    metrics = json.loads((report / "metrics.json").read_text())
    assert sum(r["support"] for r in metrics["per_class"]) == metrics["n_test"]
    assert (report / "report.md").is_file() and (report / "confusion_matrix.png").is_file()

    # the evaluation landed in the training run
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(info["run_id"])
    assert run.data.metrics["test_accuracy"] == metrics["accuracy"]
    assert "val_macro_f1" in run.data.metrics
    assert run.data.tags["data_hash"] == info["data_hash"]

    # a second model that cannot beat a perfect champion stays a candidate
    ov2 = _overrides(tmp_path, prepared_dir, f"train.output_dir={tmp_path}/models/tfidf2")
    out = _run("train", "experiment=tfidf", "model.classifier=logreg", *ov2)
    assert "v2 val_macro_f1=1" in out and "does not beat champion v1" in out
    assert "champion stays v1" in out
    listing = _run("models", "list", *ov[1:3])
    assert "1" in listing and "2" in listing
    shown = _run("models", "show", "champion", "--json", *ov[1:3])
    assert json.loads(shown)["version"] == "1"

    # the registered champion, downloaded from the registry, evaluates like the local bundle
    out = _run("evaluate", "--ref", "champion", "--report-dir", str(tmp_path / "champ"), *ov)
    champ = json.loads((tmp_path / "champ" / "metrics.json").read_text())
    assert champ["accuracy"] == metrics["accuracy"] and champ["model_family"] == "tfidf"


def test_train_refuses_empty_split_and_missing_data(tmp_path: Path, prepared_dir: Path) -> None:
    import pandas as pd

    df = pd.read_parquet(prepared_dir / "val.parquet")
    df.iloc[0:0].to_parquet(prepared_dir / "val.parquet", index=False)
    result = runner.invoke(app, ["train", *_overrides(tmp_path, prepared_dir)])
    assert result.exit_code == 2
    assert "val.parquet has no rows" in result.output
    missing = tmp_path / "nowhere"
    result = runner.invoke(app, ["train", *_overrides(tmp_path, missing)])
    assert result.exit_code == 2 and "paperops data prepare" in result.output
    assert not (tmp_path / "models" / "tfidf").exists()  # nothing half-written


def test_evaluate_names_a_missing_or_corrupt_bundle(tmp_path: Path, prepared_dir: Path) -> None:
    ov = _overrides(tmp_path, prepared_dir)
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "nothing"), *ov])
    assert result.exit_code == 2 and "model.json not found" in result.output
    _run("train", "experiment=tfidf", *ov, "train.track=false")
    (tmp_path / "models" / "tfidf" / "model.skops").write_bytes(b"garbage")
    result = runner.invoke(app, ["evaluate", *ov])
    assert result.exit_code == 2 and "corrupt" in result.output


def test_label_map_mismatch_is_refused_at_evaluation(tmp_path: Path, prepared_dir: Path) -> None:
    ov = _overrides(tmp_path, prepared_dir, "train.track=false")
    _run("train", "experiment=tfidf", *ov)
    labels = json.loads((prepared_dir / "labels.json").read_text())
    labels["labels"] = labels["labels"][::-1]
    (prepared_dir / "labels.json").write_text(json.dumps(labels))
    result = runner.invoke(app, ["evaluate", *ov])
    assert result.exit_code == 2 and "label map does not match" in result.output


def test_tfidf_sweep_runs_an_optuna_study(tmp_path: Path, prepared_dir: Path) -> None:
    ov = _overrides(
        tmp_path,
        prepared_dir,
        "hparams_search=tfidf_optuna",
        "hparams_search.n_trials=3",
        f"hparams_search.storage=sqlite:///{tmp_path}/optuna/optuna.db",
        "train.track=false",
    )
    out = _run("train", "-m", *ov)
    assert "3 trials" in out
    summary = json.loads((tmp_path / "reports" / "sweeps" / "tfidf" / "summary.json").read_text())
    assert len(summary["trials"]) == 3 and summary["best_value"] == 1.0
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna/optuna.db"
    # n_trials is the study's budget, not each run's: a second run on a finished study adds
    # nothing, and a larger budget tops it up (the worker joining draws its own parameters)
    _run("train", "-m", *ov)
    assert len(optuna.load_study(study_name="tfidf", storage=storage).trials) == 3
    out = _run("train", "-m", *ov, "hparams_search.n_trials=5")
    study = optuna.load_study(study_name="tfidf", storage=storage)
    assert len(study.trials) == 5 and "5 trials" in out
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 5


def test_experiment_presets_compose() -> None:
    for exp, family in [("tfidf", "tfidf"), ("embedding", "embedding"), ("finetune", "finetune")]:
        cfg = load_config([f"experiment={exp}"])
        assert cfg.model.family == family
    cfg = load_config(["experiment=embedding", "trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


def test_sweep_without_search_config_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "-m"])
    assert result.exit_code == 2 and "hparams_search" in result.output


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _neural(tmp_path: Path, prepared_dir: Path, encoder: Path, family: str, *extra: str) -> list:
    """The tfidf overrides with the family's preset, the tiny encoder and a 1-thread CPU run."""
    base = [
        o for o in _overrides(tmp_path, prepared_dir) if not o.startswith(("model.", "train.out"))
    ]
    return [
        *base,
        f"experiment={family}",
        f"model.encoder={encoder}",
        f"train.output_dir={tmp_path}/models/{family}",
        "trainer.accelerator=cpu",
        "trainer.num_threads=1",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("embedding", ["model.lr=0.01", "trainer.max_epochs=8", "model.batch_size=16"]),
        ("finetune", ["model.lr=0.001", "trainer.max_epochs=4", "model.batch_size=8"]),
    ],
)
def test_neural_family_trains_tracks_and_evaluates(
    tmp_path: Path, prepared_dir: Path, tiny_encoder_dir: Path, family: str, extra: list
) -> None:
    ov = _neural(tmp_path, prepared_dir, tiny_encoder_dir, family, *extra)
    out = _run("train", *ov)
    assert f"trained {family}" in out and "registry: paperops-classifier v1" in out
    info = json.loads((tmp_path / "models" / family / "training.json").read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    history = client.get_metric_history(info["run_id"], "val_macro_f1")
    # one point per epoch from Lightning, then the kept (best-checkpoint) model's score
    assert len(history) == info["fit_summary"]["epochs_run"] + 1
    last = max(history, key=lambda m: (m.step, m.timestamp))
    assert last.value == pytest.approx(info["val_metrics"]["val_macro_f1"])
    _run("evaluate", *ov)
    metrics = json.loads((tmp_path / "reports" / family / "metrics.json").read_text())
    assert metrics["model_family"] == family
    assert metrics["accuracy"] >= 0.5  # four separable classes; chance is 0.25


def test_embedding_sweep_prunes_with_lightning_callback(
    tmp_path: Path, prepared_dir: Path, tiny_encoder_dir: Path
) -> None:
    ov = _neural(
        tmp_path,
        prepared_dir,
        tiny_encoder_dir,
        "embedding",
        "hparams_search=embedding_optuna",
        "hparams_search.n_trials=4",
        "hparams_search.pruner.n_startup_trials=1",
        "hparams_search.pruner.n_warmup_steps=0",
        f"hparams_search.storage=sqlite:///{tmp_path}/optuna.db",
        "trainer.max_epochs=3",
        "train.track=false",
    )
    out = _run("train", "-m", *ov)
    assert "4 trials" in out
    summary = json.loads(
        (tmp_path / "reports" / "sweeps" / "embedding_head" / "summary.json").read_text()
    )
    states = {t["state"] for t in summary["trials"]}
    assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    assert set(summary["best_params"]) == {
        "model.lr",
        "model.hidden_dim",
        "model.dropout",
        "model.head",
    }


def test_wandb_logger_offline_next_to_mlflow(
    tmp_path: Path, prepared_dir: Path, tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logger=wandb: the Lightning metrics also go to an offline W&B run (no network)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ov = _neural(
        tmp_path,
        prepared_dir,
        tiny_encoder_dir,
        "embedding",
        "logger=wandb",
        f"logger.wandb.dir={tmp_path}/wandb",
        "trainer.max_epochs=2",
        "train.register=false",
    )
    _run("train", *ov)
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs, list((tmp_path / "wandb").rglob("*"))[:20]
    import wandb

    # the run ends with the training: an open global run would swallow the next training in
    # this process (an Optuna trial, another test), since a new WandbLogger reuses it
    assert wandb.run is None
