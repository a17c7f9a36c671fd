"""Real DDP on CPU: 2 gloo processes train the embedding head; compared with 1 process.

Lightning's DDP launcher re-executes the running script for rank 1, so training runs in a real
script file started with subprocess (not inside pytest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

pytestmark = pytest.mark.integration

SCRIPT = '''
"""Train the embedding head with `devices` CPU processes; rank 0 writes result.json + bundle."""
import json
import sys
from pathlib import Path

import numpy as np

from paperops.data.datamodule import load_splits_for_model
from paperops.models.embedding import EmbeddingClassifier, EmbeddingConfig


def main() -> None:
    prepared, encoder, out, devices = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    splits, labels = load_splits_for_model(Path(prepared))
    config = EmbeddingConfig(
        encoder=encoder, head="linear", lr=0.05, batch_size=8, cache_dir=str(out / "cache")
    )
    trainer_cfg = {
        "accelerator": "cpu",
        "devices": devices,
        "strategy": "ddp" if devices > 1 else "auto",
        "num_threads": 1,
        "max_epochs": 4,
        "patience": 4,
        "monitor": "val_macro_f1",
        "mode": "max",
        "deterministic": True,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
    }
    clf = EmbeddingClassifier(labels, config).fit(
        splits["train"], splits["val"], trainer_cfg=trainer_cfg, loggers=[], work_dir=out, seed=0
    )
    logits = clf.logits(splits["test"].texts)
    summary = clf.fit_summary
    if summary["global_rank"] != 0:  # every rank returns from fit; only rank 0 writes
        return
    clf.save(out / "bundle")
    result = {
        "shape": list(logits.shape),
        "labels": clf.labels,
        "ranks": summary["ranks"],
        "world_size": summary["world_size"],
        "finite": bool(np.isfinite(logits).all()),
        "logits": logits.tolist(),
    }
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
'''


def _run(script: Path, prepared: Path, encoder: Path, out: Path, devices: int) -> dict:
    out.mkdir(parents=True)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(prepared), str(encoder), str(out), str(devices)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=out,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_ddp_two_cpu_processes_match_one(_prepared_once: Path, tiny_encoder_dir: Path, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    single = _run(script, _prepared_once, tiny_encoder_dir, tmp_path / "one", 1)
    ddp = _run(script, _prepared_once, tiny_encoder_dir, tmp_path / "two", 2)

    assert single["ranks"] == [0] and single["world_size"] == 1
    assert ddp["ranks"] == [0, 1] and ddp["world_size"] == 2  # both ranks trained
    assert ddp["shape"] == single["shape"] and ddp["labels"] == single["labels"]
    assert ddp["finite"] and single["finite"]
    # rank 0 alone wrote the outputs, and its bundle loads in this (non-distributed) process
    outputs = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert outputs == ["bundle", "cache", "checkpoints", "result.json"]
    import numpy as np

    from paperops.data.datamodule import load_splits_for_model
    from paperops.models.base import load_classifier

    splits, labels = load_splits_for_model(_prepared_once, ["test"])
    loaded = load_classifier(tmp_path / "two" / "bundle", expected_labels=labels)
    np.testing.assert_allclose(loaded.logits(splits["test"].texts), ddp["logits"], atol=1e-6)


def test_paperops_train_with_trainer_ddp_tracks_and_registers_once(
    tmp_path: Path, prepared_dir: Path, tiny_encoder_dir: Path
) -> None:
    """The real entry point: `paperops train trainer=ddp` on 2 CPU processes. Lightning re-runs
    the command for rank 1; only rank 0 may create the MLflow run and the registry version."""
    db = tmp_path / "mlruns" / "mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "paperops.cli",
        "train",
        "experiment=embedding",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.num_threads=1",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "model.head=linear",
        "model.lr=0.05",
        "model.batch_size=8",
        f"model.encoder={tiny_encoder_dir}",
        f"model.cache_dir={tmp_path / 'cache'}",
        f"train.processed_dir={prepared_dir}",
        f"train.output_dir={tmp_path / 'bundle'}",
        f"paths.work={tmp_path / 'work'}",
        f"logger.tracking_uri=sqlite:///{db}",
        f"logger.artifact_location={tmp_path / 'artifacts'}",
        "evaluate.alpha=0.2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained embedding") == 1  # rank 1 reports nothing
    info = json.loads((tmp_path / "bundle" / "training.json").read_text())
    assert info["fit_summary"]["world_size"] == 2 and info["fit_summary"]["ranks"] == [0, 1]

    import mlflow

    # registry_uri too: otherwise the client takes the process-wide one an earlier test set
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    versions = client.search_model_versions("name='paperops-classifier'")
    assert len(versions) == 1
