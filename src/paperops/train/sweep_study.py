"""The sweep's Optuna study on a shared database: opened safely by many workers at once, one
trial budget for all of them, and the trials of a worker that died retried by the others.

Why each piece exists (each was seen failing, or is a documented Optuna limitation):
- Two workers starting at once on an empty PostgreSQL database race to create Optuna's tables
  (duplicate key in pg_type, alembic_version already exists: optuna/optuna#1092), so the schema
  and the study are created under a PostgreSQL advisory lock.
- A worker killed mid-trial leaves the trial RUNNING forever; RDB heartbeats let the next worker
  fail it once it is stale and enqueue a copy (RetryHeartbeatStaleTrialCallback).
- Workers joining a study must not replay the creator's seeded random stream, or they propose
  the very same parameters as their peers.
- A database restart leaves dead pooled connections (pool_pre_ping), a lost host must fail a
  connection in bounded time (connect_timeout, TCP keepalives), and a bad URL or password must
  read as one clear line naming the URL (password hidden) and the fix.

Optuna is imported inside the functions: it is the `train` extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from paperops.dburl import safe_url
from paperops.dburl import server_engine_kwargs as engine_kwargs

SCHEMA_LOCK_KEY = 0x70617065  # one advisory lock per database: Optuna schema + study creation
SCHEMA_LOCK_WAIT_S = 120.0
URL_EXAMPLE = "sqlite:///optuna/optuna.db or postgresql+psycopg://user:pass@host:5432/optuna"


class SweepConfigError(ValueError):
    """hparams_search is missing or a parameter spec is malformed."""


class SweepStorageError(SweepConfigError):
    """The study's database cannot be used: the message names the URL (password hidden) and what
    to do, so the CLI can show it as one line instead of a SQLAlchemy traceback."""


@dataclass(frozen=True)
class Heartbeat:
    """RDB heartbeats: a running trial writes a heartbeat every `interval_s`; a RUNNING trial
    silent for `grace_s` belongs to a dead worker and is failed, then retried up to `max_retry`
    times (a trial that kills its worker every time is not retried forever)."""

    interval_s: int = 30
    grace_s: int = 120
    max_retry: int = 2

    @classmethod
    def from_config(cls, spec: Mapping[str, Any] | None) -> Heartbeat | None:
        """`hparams_search.heartbeat` ({interval_s, grace_s, max_retry}); null turns it off."""
        if spec is None:
            return None
        try:
            hb = cls(**{k: int(v) for k, v in dict(spec).items()})
        except (TypeError, ValueError) as e:
            raise SweepConfigError(
                f"hparams_search.heartbeat takes interval_s, grace_s, max_retry (ints): {e}"
            ) from None
        if hb.interval_s <= 0 or hb.grace_s <= hb.interval_s or hb.max_retry < 0:
            raise SweepConfigError(
                "hparams_search.heartbeat needs interval_s > 0, grace_s > interval_s and "
                f"max_retry >= 0; got {hb}"
            )
        return hb


def storage_url(url: str) -> URL:
    """The parsed URL; a bare `postgresql://` gets psycopg (v3), the driver paperops installs
    (SQLAlchemy before 2.1 would otherwise look for psycopg2)."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError) as e:
        raise SweepStorageError(
            f"hparams_search.storage is not a database URL ({e}); use e.g. {URL_EXAMPLE}"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _reason(error: BaseException) -> str:
    """The driver's message on one line, without SQLAlchemy's SQL dump."""
    orig = getattr(error, "orig", None)
    inner = orig if isinstance(orig, BaseException) else error
    return " ".join(str(inner).split()) or type(inner).__name__


@contextlib.contextmanager
def _schema_lock(url: URL, kwargs: dict[str, Any]) -> Iterator[None]:
    """Serialise Optuna's schema and study creation across workers (PostgreSQL only; SQLite is one
    worker). A try-lock loop, so the wait is bounded."""
    if url.get_backend_name() != "postgresql":
        yield
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, **kwargs)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + SCHEMA_LOCK_WAIT_S
            take = sa.text("SELECT pg_try_advisory_lock(:k)").bindparams(k=SCHEMA_LOCK_KEY)
            while not conn.execute(take).scalar():
                if time.monotonic() > deadline:
                    raise SweepStorageError(
                        f"Optuna storage {safe_url(url)}: another worker "
                        f"held the schema lock for {SCHEMA_LOCK_WAIT_S:.0f} s"
                    )
                time.sleep(0.1)
            conn.commit()
            try:
                yield
            finally:
                with contextlib.suppress(sa.exc.DBAPIError):  # a lost connection frees it too
                    unlock = sa.text("SELECT pg_advisory_unlock(:k)")
                    conn.execute(unlock.bindparams(k=SCHEMA_LOCK_KEY))
                    conn.commit()
    finally:
        engine.dispose()


def _make_storage(url: URL, heartbeat: Heartbeat | None) -> Any:
    """An RDBStorage whose heartbeat thread survives a failed write (a database restart mid-trial
    would otherwise end the thread silently and get a live trial failed as stale)."""
    import optuna

    class _Storage(optuna.storages.RDBStorage):
        def record_heartbeat(self, trial_id: int) -> None:
            try:
                super().record_heartbeat(trial_id)
            except sa.exc.DBAPIError as e:
                logging.getLogger(__name__).warning("heartbeat not recorded: %s", _reason(e))

    kwargs = engine_kwargs(url)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        hb: dict[str, Any] = {}
        if heartbeat is not None:
            hb = {
                "heartbeat_interval": heartbeat.interval_s,
                "grace_period": heartbeat.grace_s,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=heartbeat.max_retry
                ),
            }
        return _Storage(url.render_as_string(hide_password=False), engine_kwargs=kwargs, **hb)


def open_study(
    url_text: str,
    study_name: str,
    direction: str,
    make_sampler: Callable[[bool], Any],
    pruner: Any,
    heartbeat: Heartbeat | None,
) -> Any:
    """Create the study or join it. `make_sampler(seeded)` builds the sampler: seeded (the
    configured seed, reproducible) for the worker that creates the study, unseeded for a worker
    that joins, so no two workers draw the same parameters."""
    import optuna

    url = storage_url(url_text)
    shown = safe_url(url)
    try:
        with _schema_lock(url, engine_kwargs(url)):
            storage = _make_storage(url, heartbeat)
            created = study_name not in optuna.get_all_study_names(storage)
            return optuna.create_study(
                study_name=study_name,
                storage=storage,
                direction=direction,
                sampler=make_sampler(created),
                pruner=pruner,
                load_if_exists=True,
            )
    except ImportError as e:
        raise SweepStorageError(
            f"Optuna storage {shown} needs a database driver that is not installed ({e}); "
            "for PostgreSQL `pip install 'psycopg[binary]'`"
        ) from None
    except sa.exc.ArgumentError as e:  # includes an unknown dialect (NoSuchModuleError)
        raise SweepStorageError(
            f"Optuna storage {shown} is not a usable database URL ({e}); use e.g. {URL_EXAMPLE}"
        ) from None
    except sa.exc.DBAPIError as e:
        raise SweepStorageError(
            f"cannot use the Optuna storage {shown}: {_reason(e)}. Check the host, port, user "
            "and password in hparams_search.storage, that the database exists and that the "
            "server accepts connections from this machine"
        ) from None
    except RuntimeError as e:
        if "compatible" not in str(e):
            raise
        raise SweepStorageError(
            f"Optuna storage {shown}: {e} If the database also holds another tool's tables "
            "(MLflow keeps its own alembic_version), give Optuna a database of its own"
        ) from None


def worker_id() -> str:
    """host:pid, recorded on each trial: which worker ran it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SurplusTrial(Exception):
    """The trial would go past the study's n_trials: another worker took the last slot at the
    same moment. It ends as FAIL with user attr `surplus` and is not retried."""


def _gate(study: Any, trial: Any, n_trials: int) -> None:
    """Refuse a trial when the trials numbered before it (finished, running or queued) already
    fill the budget: the check after the trial exists closes the race between two workers that
    both saw one free slot."""
    import optuna

    ts = optuna.trial.TrialState
    live = study.get_trials(deepcopy=False, states=(ts.COMPLETE, ts.PRUNED, ts.RUNNING, ts.WAITING))
    if sum(t.number < trial.number for t in live) >= n_trials:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"the study already has its {n_trials} trials")


def run_trials(
    study: Any,
    objective: Callable[[Any], float],
    n_trials: int,
    *,
    timeout_s: float | None,
    heartbeat: Heartbeat | None,
    log: Any,
) -> None:
    """Run trials here until the study has `n_trials` finished (COMPLETE or PRUNED) trials, in
    all workers together. One trial per `optimize` call so the budget is checked before each;
    queued retries of dead workers' trials run first. When the rest of the budget is running
    elsewhere, wait until those trials finish or, if their worker died, turn stale and come back
    as retries: at most grace_s + 2 heartbeats, after which the trials left are live workers'
    own. `timeout_s` stops starting trials (a running one is not interrupted)."""
    import optuna

    ts = optuna.trial.TrialState
    deadline = time.monotonic() + timeout_s if timeout_s else None
    me = worker_id()
    wait_until: float | None = None

    def guarded(trial: Any) -> float:
        trial.set_user_attr("worker", me)
        _gate(study, trial, n_trials)
        return objective(trial)

    while True:
        if heartbeat is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = states.count(ts.COMPLETE) + states.count(ts.PRUNED)
        running, waiting = states.count(ts.RUNNING), states.count(ts.WAITING)
        if finished >= n_trials or (deadline is not None and time.monotonic() >= deadline):
            return
        if waiting or finished + running < n_trials:
            wait_until = None
            study.optimize(guarded, n_trials=1, catch=(SurplusTrial,))
            continue
        if heartbeat is None:  # a dead worker's trial cannot be told from a live one's
            return
        now = time.monotonic()
        if wait_until is None:
            wait_until = now + heartbeat.grace_s + 2 * heartbeat.interval_s
            log.info(
                "study %s: %d finished, %d running elsewhere; waiting for them (up to %.0f s)",
                study.study_name,
                finished,
                running,
                wait_until - now,
            )
        elif now > wait_until:
            return
        time.sleep(min(2.0, heartbeat.interval_s))
