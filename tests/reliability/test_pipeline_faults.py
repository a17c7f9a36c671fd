"""Pipeline faults: `paperops data prepare` and `paperops train` killed with SIGKILL.

Real CLI subprocesses. A killed prepare leaves the output absent or exactly the previous
complete one (never a mix) and the next run removes its temp siblings; a killed train leaves
no bundle, and `trainer.resume=true` finishes it with the uninterrupted run's result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from paperops.serve.launcher import paperops_command
from tests.conftest import DEFAULT_COUNTS, make_records, write_jsonl
from tests.integration.test_dvc_pipeline import _run as _dvc_run
from tests.integration.test_dvc_pipeline import project  # noqa: F401 (a scratch DVC project)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PAPEROPS_CONFIG_DIR": str(REPO / "configs"),
    "OMP_NUM_THREADS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PAPEROPS_LOG_FORMAT": "json",  # one JSON object per log line: no wrapped messages
}
BIG_PER_CLASS = 10_000  # 40k papers: prepare works ~2-3 s, long enough to be killed mid-way
WAIT_S = 120.0  # bound on every poll loop


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*paperops_command(), *args], cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT
        )


def _run(args: list[str], cwd: Path, log: Path) -> tuple[int, str]:
    proc = _start(args, cwd, log)
    try:
        rc = proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise
    return rc, log.read_text(errors="replace")


def _kill(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL; True when the process was still running (really interrupted)."""
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return alive


def _poll(cond, proc: subprocess.Popen[bytes], interval: float = 0.005) -> bool:
    """Wait for cond() while the process runs; False if it ended (or WAIT_S passed) first."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(interval)
    return False


def _hashes(directory: Path) -> dict[str, str] | None:
    """sha256 of every file under `directory` (None when it does not exist)."""
    if not directory.exists():
        return None
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _temps(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def _messages(text: str) -> str:
    """The log messages of a run (JSON log lines), one per line."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(str(json.loads(line).get("msg", "")))
    return "\n".join(out)


# ---- data prepare ---------------------------------------------------------------------------


def _prepare_args(raw: Path, out: Path) -> list[str]:
    return [
        "data",
        "prepare",
        f"data.raw_paths='{raw}'",
        f"data.output_dir='{out}'",
        "data.min_count=4",
        "data.max_per_class=null",
    ]


def _train_tfidf_args(processed: Path, base: Path) -> list[str]:
    return [
        "train",
        "experiment=tfidf",
        f"train.processed_dir='{processed}'",
        f"train.output_dir='{base / 'bundle'}'",
        f"paths.work='{base / 'work'}'",
        "train.track=false",
        "train.register=false",
        "model.min_df=1",
        "evaluate.alpha=0.2",
    ]


def test_killed_prepare_leaves_old_output_or_none(tmp_path: Path) -> None:
    small = write_jsonl(tmp_path / "small.jsonl", make_records(DEFAULT_COUNTS))
    counts = dict.fromkeys(DEFAULT_COUNTS, BIG_PER_CLASS)
    big = write_jsonl(tmp_path / "big.jsonl", make_records(counts, seed=1))
    out = tmp_path / "data" / "processed"
    log = tmp_path / "prepare.log"
    tmp_glob = f".{out.name}.tmp-"

    def temp_dir_exists() -> bool:
        return out.parent.is_dir() and any(
            p.name.startswith(tmp_glob) for p in out.parent.iterdir()
        )

    # 1. the very first prepare killed while writing: no output at all, and train says why
    proc = _start(_prepare_args(big, out), tmp_path, log)
    assert _poll(temp_dir_exists, proc), log.read_text()
    assert _kill(proc)
    assert not out.exists() and _temps(out), _temps(out)
    rc, text = _run(_train_tfidf_args(out, tmp_path / "t0"), tmp_path, tmp_path / "train0.log")
    assert rc != 0
    assert f"{out / 'labels.json'} not found: run `paperops data prepare` first" in text
    assert not (tmp_path / "t0" / "bundle").exists()

    # 2. a complete (small) output, then prepare on the big file killed at several moments
    rc, text = _run(_prepare_args(small, out), tmp_path, log)
    assert rc == 0, text
    old = _hashes(out)
    assert old is not None and "labels.json" in old and "train.parquet" in old

    def temp_has(name: str):
        return lambda: any((t / name).exists() for t in out.parent.glob(tmp_glob + "*"))

    moments = {  # reading the raw file / temp dir just made / first of four parquet files written
        "start+1.0s": None,
        "temp dir created": temp_dir_exists,
        "train.parquet written": temp_has("train.parquet"),
    }
    kills: list[tuple[str, bool, list[str]]] = []
    for moment, cond in moments.items():
        proc = _start(_prepare_args(big, out), tmp_path, log)
        if cond is None:
            time.sleep(1.0)
        else:
            assert _poll(cond, proc), log.read_text()
        interrupted = _kill(proc)
        written = sorted(p.name for t in out.parent.glob(tmp_glob + "*") for p in t.iterdir())
        kills.append((moment, interrupted, written))
        assert interrupted, f"prepare finished before the kill at {moment}"
        assert _hashes(out) == old, f"killed at {moment}: the output changed"

    # 3. a later train uses the old complete data (62 papers, not the big file's 40k)
    base = tmp_path / "t1"
    rc, text = _run(_train_tfidf_args(out, base), tmp_path, tmp_path / "train1.log")
    assert rc == 0, text[-3000:]
    info = json.loads((base / "bundle" / "training.json").read_text())
    assert sum(info["rows"].values()) < 62

    # 4. a rerun completes, and removes the temp dirs of the killed runs
    assert _temps(out)
    rc, text = _run(_prepare_args(big, out), tmp_path, log)
    assert rc == 0, text
    assert _temps(out) == []
    new = _hashes(out)
    assert new is not None and set(new) == set(old) and new != old
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_out"] == 4 * BIG_PER_CLASS
    print("prepare kills (moment, interrupted, files in the temp dir):", kills)


# ---- train + resume ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~600 papers: the embedding head takes a few tenths of a second per epoch."""
    from paperops.data.prepare import PrepareConfig, prepare

    base = tmp_path_factory.mktemp("faults_prepared")
    raw = write_jsonl(base / "raw.jsonl", make_records(dict.fromkeys(DEFAULT_COUNTS, 150)))
    prepare(PrepareConfig(raw_paths=raw, output_dir=base / "processed", min_count=4))
    return base / "processed"


def _train_embedding_args(
    prepared: Path, encoder: Path, base: Path, cache: Path, *extra: str
) -> list[str]:
    return [
        "train",
        "experiment=embedding",
        f"train.processed_dir='{prepared}'",
        f"train.output_dir='{base / 'bundle'}'",
        f"paths.work='{base / 'work'}'",
        "train.track=false",
        "train.register=false",
        "evaluate.alpha=0.2",
        f"model.encoder='{encoder}'",
        f"model.cache_dir='{cache}'",
        "model.hidden_dim=64",
        "model.dropout=0.2",  # dropout and shuffling: both need the RNG states restored
        "model.lr=0.003",
        "model.batch_size=8",
        "trainer.accelerator=cpu",
        "trainer.num_threads=1",
        "trainer.max_epochs=8",
        "trainer.patience=2",
        "trainer.monitor=val_loss",  # macro-F1 is 1.0 from epoch 0 on this easy data
        "trainer.mode=min",
        "trainer.enable_progress_bar=false",
        "seed=7",
        *extra,
    ]


def _last_epoch(ckpt: Path) -> int:
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not there yet (the save is a rename, so never half a file)
        return -1


def _tensors(bundle: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p)) for p in sorted(bundle.glob("*.safetensors"))}


def test_killed_train_leaves_no_bundle_and_resume_matches(
    small_prepared: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    full, killed = tmp_path / "full", tmp_path / "killed"
    args_full = _train_embedding_args(small_prepared, tiny_encoder_dir, full, cache)
    rc, text = _run(args_full, tmp_path, tmp_path / "full.log")
    assert rc == 0, text[-3000:]

    args = _train_embedding_args(small_prepared, tiny_encoder_dir, killed, cache)
    last = killed / "work" / "embedding" / "checkpoints" / "last.ckpt"
    proc = _start(args, tmp_path, tmp_path / "killed.log")
    assert _poll(lambda: _last_epoch(last) >= 2, proc, interval=0.02), (
        tmp_path / "killed.log"
    ).read_text()[-3000:]
    assert _kill(proc), "the run ended before it could be killed"
    killed_at = _last_epoch(last)
    bundle = killed / "bundle"
    assert not bundle.exists()  # serve --model / evaluate have nothing partial to load
    assert [p.name for p in killed.iterdir() if p.name.startswith(".bundle.")] == []

    rc, text = _run([*args, "trainer.resume=true"], tmp_path, tmp_path / "resumed.log")
    assert rc == 0, text[-3000:]
    assert f"resuming from {last}: epoch {killed_at} done" in _messages(text)

    a = json.loads((full / "bundle" / "training.json").read_text())
    b = json.loads((bundle / "training.json").read_text())
    assert b["fit_summary"]["resumed_from"] == str(last)
    for key in ("best_epoch", "epochs_run"):
        assert a["fit_summary"][key] == b["fit_summary"][key], key
    diffs = {k: abs(a["val_metrics"][k] - b["val_metrics"][k]) for k in a["val_metrics"]}
    diffs["best_score"] = abs(a["fit_summary"]["best_score"] - b["fit_summary"]["best_score"])
    print(f"killed after epoch {killed_at}; |uninterrupted - resumed|: {diffs}")
    assert max(diffs.values()) <= 1e-6, diffs
    ta, tb = _tensors(full / "bundle"), _tensors(bundle)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        for key, value in ta[name].items():
            assert (value - tb[name][key]).abs().max().item() <= 1e-6, (name, key)


# ---- resume in-process: RNG states, wrong checkpoints --------------------------------------


def _head_fit(work: Path, n_classes: int, **cfg: object) -> dict[str, object]:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from paperops.models.embedding import HeadModule, build_head
    from paperops.models.lightning import fit_module
    from paperops.models.process import seed_everything
    from tests.conftest import small_trainer_cfg

    seed_everything(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(60, 8)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, n_classes, size=60))
    head = build_head("mlp", 8, n_classes, 16, 0.2)
    module = HeadModule(head, n_classes, lr=0.01, weight_decay=0.0, class_weights=None,
                        label_smoothing=0.0)  # fmt: skip
    loader = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=8)
    trainer_cfg = small_trainer_cfg(max_epochs=2, patience=5, **cfg)
    return fit_module(module, loader, val, trainer_cfg=trainer_cfg, loggers=[], ckpt_dir=work)


def test_resume_state_loads_weights_only_and_restores_rng(tmp_path: Path) -> None:
    import random

    import numpy as np
    import torch

    from paperops.models.lightning import ResumeState

    gen = torch.Generator().manual_seed(3)
    cb = ResumeState([gen])
    torch.save({"s": cb.state_dict()}, tmp_path / "s.pt")
    expected = (
        random.random(),
        np.random.rand(),
        torch.rand(1).item(),
        torch.rand(1, generator=gen).item(),
    )
    state = torch.load(tmp_path / "s.pt", weights_only=True)["s"]  # no pickled objects
    cb.load_state_dict(state)
    got = (
        random.random(),
        np.random.rand(),
        torch.rand(1).item(),
        torch.rand(1, generator=gen).item(),
    )
    assert got == expected


def test_resume_without_checkpoint_starts_fresh_and_wrong_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        summary = _head_fit(tmp_path, 3, resume=True)
    assert summary["resumed_from"] is None
    assert "does not exist: starting a fresh run" in caplog.text
    assert (tmp_path / "last.ckpt").is_file()
    # the same work dir, a data set with 4 classes: a clear error instead of a shape mismatch
    with pytest.raises(ValueError, match=r"last\.ckpt: it was written for another model"):
        _head_fit(tmp_path, 4, resume=True)
    resumed = _head_fit(tmp_path, 3, resume=True)  # finished run: nothing left to train
    assert resumed["resumed_from"] == str(tmp_path / "last.ckpt")
    assert resumed["best_epoch"] == summary["best_epoch"]


# ---- DVC: a killed stage is not recorded ----------------------------------------------------


def test_killed_dvc_stage_is_not_recorded_and_reruns(project: Path) -> None:  # noqa: F811
    """`dvc repro` killed (with its `paperops data prepare` child) after a complete run and a
    params change: dvc.lock keeps the old run, `dvc status` shows the stage changed, and the
    next `dvc repro` reruns it and removes the killed run's temp dir."""
    import gzip
    import sys

    import yaml

    raw = project.parent / "shared" / "data" / "arxiv" / "arxiv-metadata.jsonl.gz"
    raw.write_bytes(gzip.compress(b"".join(
        json.dumps(r).encode() + b"\n"
        for r in make_records(dict.fromkeys(DEFAULT_COUNTS, BIG_PER_CLASS // 2), seed=2)
    )))  # fmt: skip
    # the second default file repeats them (same ids and labels: de-duplicated, no conflict)
    raw.with_name("arxiv-augment.jsonl.gz").write_bytes(raw.read_bytes())
    dvc = [sys.executable, "-m", "dvc"]
    _dvc_run([*dvc, "repro", "prepare"], project)
    out = project / "data" / "processed"
    lock = (project / "dvc.lock").read_text()
    old = _hashes(out)

    params = project / "configs" / "data" / "arxiv.yaml"
    cfg = yaml.safe_load(params.read_text())
    cfg["fractions"] = {"train": 0.6, "val": 0.2, "calibration": 0.1, "test": 0.1}
    params.write_text(yaml.safe_dump(cfg))
    log = project.parent / "dvc.log"
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PAPEROPS_SHARED": str(project.parent / "shared")}  # fmt: skip
    with log.open("wb") as f:
        proc = subprocess.Popen([*dvc, "repro", "prepare"], cwd=project, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        assert _poll(lambda: bool(_temps(out)), proc), log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage command it started
        proc.wait(timeout=30)
    after = _hashes(out)
    assert after in (old, None), "a partial output"  # dvc may remove outs before the command
    assert (project / "dvc.lock").read_text() == lock  # the killed run is not recorded
    status = _dvc_run([*dvc, "status", "prepare"], project)
    assert "prepare:" in status.stdout and "changed" in status.stdout, status.stdout
    rerun = _dvc_run([*dvc, "repro", "prepare"], project)
    assert "Running stage 'prepare'" in rerun.stdout
    assert _temps(out) == [] and (project / "dvc.lock").read_text() != lock
    print(f"dvc: output after the kill was {'the old one' if after else 'absent'}")
