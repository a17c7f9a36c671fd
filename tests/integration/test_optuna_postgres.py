"""Sweeps on a shared PostgreSQL study, as scaled out (docs/training.md#sweeps): real `paperops
train -m` worker processes on one study in a throwaway PostgreSQL server.

What must hold: two workers started at once share the study's n_trials (exactly n_trials finished
trials in all, each trial number and each trial's MLflow run once, no parameter set drawn twice,
both workers take part); the median pruner prunes on PostgreSQL storage; a worker killed with
SIGKILL mid-trial leaves a RUNNING trial that the next worker fails once its heartbeat is stale
and runs again, and the study still reaches n_trials; a worker's connections outlive a database
restart between trials; a wrong password, a closed port, a silent server or a bad URL is one
clear error naming the URL with the password hidden. Figures for the docs print with -s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paperops.cli import app
from paperops.serve.launcher import paperops_command
from paperops.train.sweep import SweepStorageError, run_sweep
from paperops.train.sweep_study import Heartbeat, open_study
from tests.conftest import CONFIG_DIR
from tests.pg import PASSWORD, PgCluster, query, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENV = {
    "PAPEROPS_CONFIG_DIR": str(CONFIG_DIR),
    "OMP_NUM_THREADS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
WORKER_TIMEOUT_S = 240.0  # a worker's whole run; a hung worker fails the test, never blocks it
HEARTBEAT = "hparams_search.heartbeat={interval_s:1,grace_s:3,max_retry:2}"


def _overrides(
    base: Path, prepared: Path, storage: str, *extra: str, tracking: str | None = None
) -> list[str]:
    return [
        "hparams_search=tfidf_optuna",
        f"hparams_search.storage='{storage}'",
        HEARTBEAT,
        f"train.processed_dir={prepared}",
        f"logger.tracking_uri='{tracking or f'sqlite:///{base}/mlruns/mlflow.db'}'",
        f"logger.artifact_location={base}/mlruns/artifacts",
        f"paths.reports={base}/reports",
        f"paths.models={base}/models",
        f"paths.work={base}/outputs",
        "evaluate.alpha=0.2",  # the tiny calibration split has 6 rows
        *extra,
    ]


def _start(base: Path, overrides: list[str]) -> subprocess.Popen[bytes]:
    """One worker: `paperops train -m ...` in its own directory and process group."""
    base.mkdir(parents=True, exist_ok=True)
    log = (base / "worker.log").open("wb")
    return subprocess.Popen(  # our own CLI with our own arguments
        [*paperops_command(), "train", "-m", *overrides],
        cwd=base,
        env=os.environ | ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[bytes], base: Path) -> str:
    """Wait (bounded) for a worker; its log, after asserting it exited 0."""
    try:
        proc.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    out = (base / "worker.log").read_text(errors="replace")
    assert proc.returncode == 0, out[-4000:]
    return out


def _study(url: str, name: str = "tfidf") -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=True)


def _finished(trials: list) -> list:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in trials if t.state in done]


def test_two_workers_share_one_study(
    pg_own_cluster: PgCluster, prepared_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    n_trials = 6
    url = pg_own_cluster.url(pg_own_cluster.new_database("optuna"))
    # MLflow's own database (it cannot share Optuna's: both keep an alembic_version table),
    # its schema made once here so the workers do not race MLflow's migrations
    tracking = pg_own_cluster.url(pg_own_cluster.new_database("mlflow"))
    mlflow.MlflowClient(tracking_uri=tracking).search_experiments()
    extra = f"hparams_search.n_trials={n_trials}"
    bases = [tmp_path / f"w{i}" for i in range(2)]
    t0 = time.monotonic()
    procs = [_start(b, _overrides(b, prepared_dir, url, extra, tracking=tracking)) for b in bases]
    logs = [_finish(p, b) for p, b in zip(procs, bases, strict=True)]
    elapsed = time.monotonic() - t0

    trials = _study(url)
    finished = _finished(trials)
    assert len(finished) == n_trials, [(t.number, t.state.name) for t in trials]
    # anything else is a trial refused at the budget gate (two workers took the last slot)
    assert all(t.user_attrs.get("surplus") for t in trials if t not in finished)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == n_trials, params  # a joining worker does not replay the seed
    per_worker = Counter(t.user_attrs["worker"] for t in finished)
    assert len(per_worker) == 2, per_worker
    for log in logs:
        assert f"{len(trials)} trials" in log  # each worker's summary covers the whole study

    client = mlflow.MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("paperops")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    by_name = Counter(r.info.run_name for r in runs)
    assert by_name == Counter(f"tfidf-trial{t.number}" for t in finished), by_name
    ids = {r.info.run_name: r.info.run_id for r in runs}
    assert all(t.user_attrs["mlflow_run_id"] == ids[f"tfidf-trial{t.number}"] for t in finished)
    print(
        f"\n[optuna-pg] 2 workers, n_trials={n_trials}: trials per worker "
        f"{sorted(per_worker.values())}, {len(trials) - len(finished)} surplus, "
        f"{elapsed:.1f} s wall"
    )


def test_killed_worker_trial_is_failed_and_retried(
    pg_own_cluster: PgCluster, prepared_dir: Path, tmp_path: Path
) -> None:
    n_trials = 3
    url = pg_own_cluster.url(pg_own_cluster.new_database("optuna"))
    extra = [f"hparams_search.n_trials={n_trials}", "train.track=false"]
    first = tmp_path / "first"
    proc = _start(first, _overrides(first, prepared_dir, url, *extra))
    # a trial RUNNING with its heartbeat recorded and its parameters drawn: training
    running_sql = (
        "SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND EXISTS "
        "(SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id)"
    )
    deadline = time.monotonic() + 120
    killed: int | None = None
    killed_at = 0.0
    try:
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            rows = query(url, running_sql) if _has_tables(url) else []
            if rows:  # mid-trial, its heartbeat recorded: kill the worker outright
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = time.time()
                killed = int(rows[0][0])
            else:
                time.sleep(0.05)
    finally:
        if proc.poll() is None and killed is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert killed is not None, (first / "worker.log").read_text(errors="replace")[-3000:]
    assert query(url, f"SELECT state FROM trials WHERE number = {killed}") == [("RUNNING",)]

    second = tmp_path / "second"
    _finish(_start(second, _overrides(second, prepared_dir, url, *extra)), second)

    import optuna

    trials = {t.number: t for t in _study(url)}
    stale = trials[killed]
    assert stale.state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1, [(t.number, t.state.name, t.system_attrs) for t in trials.values()]
    retry = retries[0]
    assert retry.system_attrs["retry_history"] == [killed]
    # the retry replays what the killed trial had drawn (it may have died before drawing all)
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert stale.params and stale.params.items() <= retry.params.items()
    assert len(_finished(list(trials.values()))) == n_trials
    assert stale.datetime_complete is not None and retry.datetime_start is not None
    failed_s = stale.datetime_complete.timestamp() - killed_at
    retried_s = retry.datetime_start.timestamp() - killed_at
    print(
        f"\n[optuna-pg] killed trial {killed}: failed {failed_s:.1f} s after SIGKILL, retried as "
        f"trial {retry.number} {retried_s:.1f} s after (grace 3 s; includes the second worker's "
        "start-up)"
    )


def _has_tables(url: str) -> bool:
    return bool(query(url, "SELECT 1 FROM pg_tables WHERE tablename = 'trial_heartbeats'"))


def test_median_pruner_prunes_on_postgres(
    pg_own_cluster: PgCluster,
    prepared_dir: Path,
    tiny_encoder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A learning rate that learns nothing next to one that learns: the median pruner (fed by
    the Lightning callback through PostgreSQL) stops the former after its first epochs."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    url = pg_own_cluster.url(pg_own_cluster.new_database("optuna"))
    overrides = [
        o
        for o in _overrides(tmp_path, prepared_dir, url)
        if not o.startswith(("hparams_search=", "model."))
    ]
    overrides = [
        "hparams_search=embedding_optuna",
        *overrides,
        f"model.encoder={tiny_encoder_dir}",
        "trainer.accelerator=cpu",
        "trainer.num_threads=1",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=4",
        "model.batch_size=16",
        "train.track=false",
        "hparams_search.n_trials=3",
        "hparams_search.sampler={name:random,seed:6}",  # 0.05, 0.05, then 1e-08
        "hparams_search.pruner.n_startup_trials=1",
        "hparams_search.pruner.n_warmup_steps=0",
        "~hparams_search.params",
        "+hparams_search.params={model.lr:{type:categorical,choices:[0.05,1e-08]}}",
    ]
    result = run_sweep(overrides)
    trials = _study(url, "embedding_head")
    states = Counter(t.state.name for t in trials)
    assert states["PRUNED"] >= 1 and states["COMPLETE"] >= 1, [
        (t.state.name, t.params, t.intermediate_values) for t in trials
    ]
    assert result.n_pruned == states["PRUNED"]
    for t in trials:
        if t.state.name == "PRUNED":
            assert t.params["model.lr"] == 1e-08 and len(t.intermediate_values) < 4
    print(f"\n[optuna-pg] median pruner on PostgreSQL: {dict(states)}")


def test_worker_survives_a_database_restart_between_trials(pg_own_cluster: PgCluster) -> None:
    import optuna

    url = pg_own_cluster.url(pg_own_cluster.new_database("optuna"))
    study = open_study(
        url,
        "restart",
        "minimize",
        lambda seeded: optuna.samplers.RandomSampler(seed=0 if seeded else None),
        optuna.pruners.NopPruner(),
        Heartbeat(interval_s=1, grace_s=3),
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    pg_own_cluster.stop()  # `fast`: every pooled connection of this worker is now dead
    pg_own_cluster.start()
    wait_ready(pg_own_cluster)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]


def _silent_server() -> socket.socket:
    """A port that accepts TCP connections and never answers (a hung server or a firewall that
    swallows packets, on loopback)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


@pytest.mark.parametrize("case", ["password", "closed_port", "silent", "no_database", "bad_url"])
def test_unusable_storage_is_one_clear_error(
    pg_own_cluster: PgCluster, tmp_path: Path, case: str
) -> None:
    db = pg_own_cluster.new_database("optuna")
    silent = _silent_server() if case == "silent" else None
    try:
        url = {
            "password": pg_own_cluster.url(db, password="wrong-secret"),
            "closed_port": pg_own_cluster.url(db, port=_closed_port()),
            "silent": pg_own_cluster.url(db, port=silent.getsockname()[1] if silent else 0).replace(
                "connect_timeout=5", "connect_timeout=2"
            ),
            "no_database": pg_own_cluster.url("no_such_db"),
            "bad_url": f"postgresql+nodriver://paperops:{PASSWORD}@127.0.0.1/x",
        }[case]
        with pytest.raises(SweepStorageError) as err:
            run_sweep(
                [
                    "hparams_search=tfidf_optuna",
                    f"hparams_search.storage='{url}'",
                    f"paths.reports={tmp_path}/reports",
                    f"paths.models={tmp_path}/models",
                ]
            )
        result = CliRunner().invoke(
            app, ["train", "-m", "hparams_search=tfidf_optuna", f"hparams_search.storage='{url}'"]
        )
    finally:
        if silent is not None:
            silent.close()
    message = str(err.value)
    assert PASSWORD not in message and "wrong-secret" not in message
    assert "***" in message and "127.0.0.1" in message
    expected = {
        "password": "password authentication failed",
        "closed_port": "Connection refused",
        "silent": "timeout",
        "no_database": "does not exist",
        "bad_url": "not a usable database URL",
    }[case]
    assert expected in message, message
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    assert PASSWORD not in result.output and "wrong-secret" not in result.output
    print(f"\n[optuna-pg] {case}: {result.output.strip()}")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the with-block ends
