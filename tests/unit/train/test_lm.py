"""The LM through the lifecycle: corpus -> train -> MLflow run -> registry gate -> evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paperops.cli import app
from paperops.models.lm import load_lm
from paperops.tracking.runs import point_mlflow

runner = CliRunner()
SUBJECTS = ["fever", "rash", "cough", "headache", "back pain", "insomnia", "allergy", "flu"]


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def lm_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A tiny header-less mqp-style CSV, prepared as a corpus; the overrides to train on it."""
    tmp = tmp_path_factory.mktemp("lm_train")
    csv_path = tmp / "mqp.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        for i in range(150):
            s = SUBJECTS[i % len(SUBJECTS)]
            q1 = f"What should I take for {s} number {i}?"
            w.writerow([i % 5 + 1, q1, f"Which medicine helps {s} case {i}?", 1])
            w.writerow([i % 5 + 1, q1, f"Is {s} contagious in situation {i}?", 0])
    ov = [
        f"paths.data={tmp}/data",
        f"paths.reports={tmp}/reports",
        f"paths.models={tmp}/models",
        f"paths.work={tmp}/outputs",
        f"logger.tracking_uri=sqlite:///{tmp}/mlruns/mlflow.db",
        f"logger.artifact_location={tmp}/mlruns/artifacts",
        f"corpus.path={csv_path}",
        "corpus.min_rows={train: 50, val: 5, test: 5}",
    ]
    _run("data", "prepare-corpus", *ov)
    tiny = [
        "model.vocab_size=300",
        "model.min_frequency=1",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "model.context_length=32",
        "model.warmup_steps=2",
        "model.batch_size=8",
        "model.sample_max_new_tokens=8",
        "trainer.accelerator=cpu",
        "trainer.num_threads=1",
        "trainer.enable_progress_bar=false",
        "trainer.deterministic=true",
    ]
    return tmp, [*ov, *tiny]


def test_train_register_gate_and_evaluate(lm_env: tuple[Path, list[str]]) -> None:
    tmp, ov = lm_env
    out = _run("train", "experiment=lm_mqp", "trainer.max_epochs=3", "model.lr=0.005", *ov)
    assert "trained lm" in out and "perplexity" in out
    assert "registry: paperops-generator v1" in out and "champion" in out
    bundle = tmp / "models" / "lm_mqp"
    info = json.loads((bundle / "training.json").read_text())
    assert info["family"] == "lm" and info["corpus"] == "mqp" and info["run_id"]
    samples = json.loads((bundle / "samples.json").read_text())
    assert [s["prompt"] for s in samples][:1] == ["Can I take ibuprofen"]
    assert load_lm(bundle).meta["corpus"] == "mqp"

    out = _run("evaluate", "experiment=lm_mqp", *ov)
    assert "perplexity" in out
    m = json.loads((tmp / "reports" / "lm_mqp" / "metrics.json").read_text())
    assert m["n_test"] > 0 and m["perplexity"] > 1 and m["slices"]
    assert m["perplexity"] < m["unigram_perplexity"]  # it learned more than token frequencies
    report = (tmp / "reports" / "lm_mqp" / "report.md").read_text()
    assert "bits per byte" in report and "Can I take ibuprofen" in report

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")
    run = client.get_run(info["run_id"])
    assert run.data.metrics["val_perplexity"] == pytest.approx(
        info["val_metrics"]["val_perplexity"]
    )
    assert run.data.metrics["test_perplexity"] == pytest.approx(m["perplexity"])
    names = [a.path for a in client.list_artifacts(info["run_id"], "samples")]
    assert "samples/samples.md" in names

    # a worse model (one epoch at a tiny learning rate) stays a candidate
    out = _run(
        "train", "experiment=lm_mqp", "trainer.max_epochs=1", "model.lr=0.00001",
        f"train.output_dir={tmp}/models/worse", *ov,
    )  # fmt: skip
    assert "v2" in out and "does not beat champion v1" in out

    # the registered champion loads as an MLflow pyfunc (models-from-code) and generates
    point_mlflow(f"sqlite:///{tmp}/mlruns/mlflow.db")  # without exporting it to os.environ
    model = mlflow.pyfunc.load_model("models:/paperops-generator@champion")
    import pandas as pd

    pred = model.predict(pd.DataFrame({"prompt": ["What should I take"]}), params={"seed": 1})
    again = model.predict(pd.DataFrame({"prompt": ["What should I take"]}), params={"seed": 1})
    assert list(pred.columns) == ["text", "generated_tokens"]
    assert pred["text"][0] == again["text"][0]

    # the champion downloaded from the registry evaluates like the local bundle
    _run("evaluate", "experiment=lm_mqp", "--ref", "champion", "--report-dir", f"{tmp}/ch", *ov)
    champ = json.loads((tmp / "ch" / "metrics.json").read_text())
    assert champ["perplexity"] == pytest.approx(m["perplexity"])


def test_missing_corpus_is_a_clear_error(lm_env: tuple[Path, list[str]], tmp_path: Path) -> None:
    _, ov = lm_env
    result = runner.invoke(
        app, ["train", "experiment=lm_mqp", *ov, f"corpus.output_dir={tmp_path}/none"]
    )
    assert result.exit_code == 2
    assert "prepare-corpus" in result.output
