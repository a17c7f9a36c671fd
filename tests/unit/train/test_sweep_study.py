"""The shared-study machinery of sweeps (paperops.train.sweep_study) on a real SQLite study: the
budget gate, a dead worker's trial failed and retried, URL handling and heartbeat settings. The
PostgreSQL side runs live in tests/integration/test_optuna_postgres.py."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest

from paperops.train.sweep_study import (
    Heartbeat,
    SurplusTrial,
    SweepConfigError,
    SweepStorageError,
    _gate,
    engine_kwargs,
    open_study,
    run_trials,
    safe_url,
    storage_url,
)

log = logging.getLogger(__name__)


def _study(tmp_path: Path, heartbeat: Heartbeat | None) -> optuna.Study:
    return open_study(
        f"sqlite:///{tmp_path}/optuna.db",
        "s",
        "minimize",
        lambda seeded: optuna.samplers.RandomSampler(seed=0 if seeded else None),
        optuna.pruners.NopPruner(),
        heartbeat,
    )


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)


def test_budget_is_the_study_total(tmp_path: Path) -> None:
    study = _study(tmp_path, None)
    run_trials(study, _objective, 3, timeout_s=None, heartbeat=None, log=log)
    run_trials(study, _objective, 3, timeout_s=None, heartbeat=None, log=log)  # already done
    assert len(study.trials) == 3
    run_trials(study, _objective, 4, timeout_s=None, heartbeat=None, log=log)  # tops it up
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


def test_gate_refuses_a_trial_past_the_budget(tmp_path: Path) -> None:
    study = _study(tmp_path, None)
    first, second = study.ask(), study.ask()  # two workers took a slot at the same moment
    _gate(study, first, 1)
    with pytest.raises(SurplusTrial):
        _gate(study, second, 1)
    assert second.user_attrs["surplus"] is True


def test_dead_workers_trial_is_failed_and_retried(tmp_path: Path) -> None:
    hb = Heartbeat(interval_s=1, grace_s=2, max_retry=1)
    study = _study(tmp_path, hb)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study._storage.record_heartbeat(dead._trial_id)  # then its worker dies: no more heartbeats
    # the whole budget is that RUNNING trial: this worker waits until it is stale, then retries
    run_trials(study, _objective, 1, timeout_s=60, heartbeat=hb, log=log)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params


def test_heartbeat_config() -> None:
    assert Heartbeat.from_config({}) == Heartbeat()
    assert Heartbeat.from_config(None) is None
    assert Heartbeat.from_config({"interval_s": 5, "grace_s": 20}) == Heartbeat(5, 20, 2)
    for bad in ({"interval_s": 10, "grace_s": 10}, {"interval_s": 0}, {"every": 3}):
        with pytest.raises(SweepConfigError):
            Heartbeat.from_config(bad)


def test_urls_and_connection_settings() -> None:
    url = storage_url("postgresql://u:secret@db:5432/optuna?connect_timeout=3")
    assert url.drivername == "postgresql+psycopg"  # the driver paperops installs
    kwargs = engine_kwargs(url)
    assert kwargs["pool_pre_ping"] is True
    assert "connect_timeout" not in kwargs["connect_args"]  # the URL's own setting wins
    assert kwargs["connect_args"]["keepalives"] == 1
    pg = engine_kwargs(storage_url("postgresql+psycopg://u@db/o"))
    assert pg["connect_args"]["connect_timeout"] == 5
    assert engine_kwargs(storage_url("sqlite:///x.db")) == {}
    assert safe_url("postgresql://u:secret@db/o") == "postgresql://u:***@db/o"
    with pytest.raises(SweepStorageError, match="not a database URL"):
        storage_url("not a url")
