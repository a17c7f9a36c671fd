"""`dvc repro` runs the pipeline offline, skips unchanged stages, and stops on bad data.

Runs the repo's real dvc.yaml and configs in a scratch git repo whose ../shared holds a small file.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLASSES = {
    "cs.LG": "neural network training gradient",
    "hep-th": "string theory brane duality",
    "astro-ph.GA": "galaxy stellar halo dwarf",
    "math.AG": "algebraic variety scheme sheaf",
}


def _run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PAPEROPS_SHARED": str(cwd.parent / "shared"),
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    raw = tmp_path / "shared" / "data" / "arxiv" / "arxiv-metadata.jsonl.gz"
    raw.parent.mkdir(parents=True)
    with gzip.open(raw, "wt") as f:
        for i in range(400):
            cat = list(CLASSES)[i % 4]
            f.write(
                json.dumps(
                    {
                        "id": f"2101.{i:05d}",
                        "title": f"Paper {i} on {CLASSES[cat].split()[0]}",
                        "abstract": f"We study {CLASSES[cat]} in setting {i}, with result {i * 7}.",
                        "categories": cat,
                        "update_date": f"2021-01-{1 + i % 28:02d}",
                    }
                )
                + "\n"
            )
    # the second file of the default raw_paths: 40 more papers and one the first file has
    # (same id, same primary: de-duplicated across files)
    augment = raw.with_name("arxiv-augment.jsonl.gz")
    with gzip.open(augment, "wt") as f:
        for i in [*range(400, 440), 0]:
            cat = list(CLASSES)[i % 4]
            row = {
                "id": f"2101.{i:05d}",
                "title": f"Paper {i} on {CLASSES[cat].split()[0]}",
                "abstract": f"We study {CLASSES[cat]} in setting {i}, with result {i * 7}.",
                "categories": cat,
                "update_date": f"2021-02-{1 + i % 28:02d}",
            }
            f.write(json.dumps(row) + "\n")
    mqp = tmp_path / "shared" / "data" / "medical_questions_pairs" / "mqp.csv"
    mqp.parent.mkdir(parents=True)
    with mqp.open("w") as f:  # header-less, like the real file
        for i in range(80):
            q1 = f"What should I take for symptom {i} after {i % 5 + 1} days?"
            f.write(f'{i % 4 + 1},"{q1}","Which medicine helps symptom {i}?",1\n')
            f.write(f'{i % 4 + 1},"{q1}","Is symptom {i} contagious at work?",0\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "configs", "src", ".dvc/config", ".dvcignore"):
        src, dst = REPO / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    params = repo / "configs" / "data" / "arxiv.yaml"
    cfg = yaml.safe_load(params.read_text())
    cfg["min_count"] = 20
    cfg["validation"]["min_rows_total"] = 100
    params.write_text(yaml.safe_dump(cfg))
    corpus = repo / "configs" / "corpus" / "mqp.yaml"
    ccfg = yaml.safe_load(corpus.read_text())
    ccfg["min_rows"] = {"train": 20, "val": 2, "test": 2}
    corpus.write_text(yaml.safe_dump(ccfg))
    demo_lm = repo / "configs" / "experiment" / "demo_lm.yaml"  # the LM, shrunk to seconds
    lcfg = yaml.safe_load(demo_lm.read_text())
    lcfg["model"] = {"vocab_size": 300, "min_frequency": 1, "n_layer": 1, "n_embd": 32,
                     "n_head": 2, "context_length": 32, "sample_max_new_tokens": 8}  # fmt: skip
    lcfg["trainer"] = {"max_epochs": 2, "enable_progress_bar": False}
    demo_lm.write_text("# @package _global_\n" + yaml.safe_dump(lcfg))
    _run(["git", "init", "-q"], repo)
    return repo


def test_repro_runs_then_skips_then_reacts_to_params(project: Path) -> None:
    """The data stages (`dvc repro validate` runs prepare -> validate only)."""
    first = _run([sys.executable, "-m", "dvc", "repro", "validate"], project)
    assert "Running stage 'prepare'" in first.stdout and "Running stage 'validate'" in first.stdout
    assert (project / "data" / "processed" / "train.parquet").is_file()
    assert json.loads((project / "reports/data/validation.json").read_text())["ok"] is True
    labels = json.loads((project / "data" / "processed" / "labels.json").read_text())
    assert [Path(f["path"]).name for f in labels["raw_files"]] == [
        "arxiv-metadata.jsonl.gz",
        "arxiv-augment.jsonl.gz",
    ]
    stats = json.loads((project / "data" / "processed" / "stats.json").read_text())
    # 400 + 41 read, the one paper both files have kept once
    assert (stats["rows_read"], stats["rows_out"]) == (441, 440)

    again = _run([sys.executable, "-m", "dvc", "repro", "validate"], project)
    assert "Running stage" not in again.stdout
    assert "didn't change, skipping" in again.stdout

    params = project / "configs" / "data" / "arxiv.yaml"
    cfg = yaml.safe_load(params.read_text())
    cfg["fractions"] = {"train": 0.6, "val": 0.2, "calibration": 0.1, "test": 0.1}
    params.write_text(yaml.safe_dump(cfg))
    third = _run([sys.executable, "-m", "dvc", "repro", "validate"], project)
    assert "Running stage 'prepare'" in third.stdout

    # The local default remote works offline: push, lose the outputs, pull them back.
    _run([sys.executable, "-m", "dvc", "push", "prepare"], project)
    shutil.rmtree(project / "data")
    _run([sys.executable, "-m", "dvc", "pull", "prepare"], project)
    assert (project / "data" / "processed" / "labels.json").is_file()


def test_validation_failure_stops_the_pipeline(project: Path) -> None:
    params = project / "configs" / "data" / "arxiv.yaml"
    cfg = yaml.safe_load(params.read_text())
    cfg["validation"]["min_rows_total"] = 10**6
    params.write_text(yaml.safe_dump(cfg))
    proc = _run([sys.executable, "-m", "dvc", "repro"], project, check=False)
    assert proc.returncode != 0
    report = json.loads((project / "reports/data/validation.json").read_text())
    assert [v["rule"] for v in report["violations"]] == ["min_rows_total"]
    assert "min_rows_total" in proc.stderr + proc.stdout


def test_whole_pipeline_trains_evaluates_registers_then_skips(project: Path) -> None:
    """prepare (both raw files) -> validate -> train/evaluate tfidf, the hybrid and the demo
    embedding head (real MiniLM as its int8 graph, built once, shared) -> export; the LM:
    corpus -> train -> evaluate -> ONNX export."""
    first = _run([sys.executable, "-m", "dvc", "repro"], project, timeout=900)
    stages = (
        *("train_tfidf", "evaluate_tfidf", "train_hybrid", "evaluate_hybrid"),
        *("train_embedding", "evaluate_embedding"),
        *("export_embedding", "prepare_corpus_mqp", "train_lm", "evaluate_lm", "export_lm"),
    )
    for stage in stages:
        assert f"Running stage '{stage}'" in first.stdout
    for name in ("tfidf", "hybrid", "demo_embedding"):
        bundle = project / "models" / name
        assert (bundle / "model.json").is_file() and (bundle / "calibration.json").is_file()
        metrics = json.loads((project / "reports" / name / "metrics.json").read_text())
        assert sum(r["support"] for r in metrics["per_class"]) == metrics["n_test"]
        assert metrics["accuracy"] > 0.5  # four separable classes
    assert (project / "mlruns" / "mlflow.db").is_file()
    lm = json.loads((project / "reports" / "demo_lm" / "metrics.json").read_text())
    assert lm["n_test"] > 0 and lm["perplexity"] > 1
    export = json.loads((project / "models" / "demo_lm_onnx" / "export.json").read_text())
    assert export["family"] == "lm" and export["parity"]["fp32"]["passed"]

    again = _run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage" not in again.stdout
    models = _run([sys.executable, "-m", "paperops.cli", "models", "list"], project)
    assert "champion" in models.stdout or "*" in models.stdout
    gen = _run([sys.executable, "-m", "paperops.cli", "models", "list", "--name",
                "paperops-generator"], project)  # fmt: skip
    assert "val_perplexity" in gen.stdout and "champion" in gen.stdout
