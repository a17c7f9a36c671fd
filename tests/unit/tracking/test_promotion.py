"""Champion decisions under the promotion lock, their history, and rollback, on real SQLite
MLflow stores (no mocks): two processes racing to promote, stale and held locks, the audit trail,
`paperops models history` and `paperops models rollback`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from paperops.tracking import history as history_mod
from paperops.tracking import promotion_lock
from paperops.tracking.history import history
from paperops.tracking.promotion import promote, rollback
from paperops.tracking.registry import RegistryError, list_versions
from paperops.tracking.runs import resolve_tracking_uri
from tests.unit.tracking.conftest import candidate, champion_version

WORKER = Path(__file__).with_name("promotion_worker.py")


def client_of(store: dict[str, Any]) -> MlflowClient:
    uri = resolve_tracking_uri(store["tracking_uri"])
    return MlflowClient(uri, uri)


def lock_models(store: dict[str, Any], name: str) -> list[str]:
    """`name` and any registered model named after it (a lock, a lock's breaker)."""
    found = [m.name for m in client_of(store).search_registered_models()]
    return [n for n in found if n == name or n.startswith(f"{name}.")]


# --- two processes, one champion -----------------------------------------------------------------


def race(store, logged, name: str, tmp: Path, *, lock: bool, hold_s: float) -> dict[str, Any]:
    """v1 (0.60) is champion; two worker processes register 0.70 and 0.80 from one start signal."""
    candidate(store, logged, name, 0.60)
    go, procs = tmp / "go", []
    for score in (0.70, 0.80):
        spec = {k: store[k] for k in ("tracking_uri", "artifact_location", "experiment_name")}
        spec |= {"name": name, "run_id": logged[0], "model_uri": logged[1], "score": score}
        spec |= {"ready": str(tmp / f"ready-{score}"), "go": str(go), "lock": lock}
        spec |= {"hold_s": hold_s}
        cmd = [sys.executable, str(WORKER), json.dumps(spec)]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    deadline = time.monotonic() + 120
    while not all((tmp / f"ready-{s}").exists() for s in (0.70, 0.80)):
        dead = [p for p in procs if p.poll() is not None]
        assert not dead and time.monotonic() < deadline, [p.communicate()[1][-2000:] for p in dead]
        time.sleep(0.01)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    results.sort(key=lambda r: r["entered"])  # the order they entered the critical section
    return {
        "results": results,
        "champion": champion_version(store, name),
        "history": history(store, name),
    }


def race_problems(outcome: dict[str, Any]) -> list[str]:
    """What went wrong, if anything: the better model must end as champion, and the second
    decision must have been judged against the first one's result, not the old champion."""
    decisions = {r["decision"]["candidate_score"]: r["decision"] for r in outcome["results"]}
    better, worse = decisions[0.80]["version"], decisions[0.70]["version"]
    problems = []
    if outcome["champion"] != better:
        problems.append(f"champion is v{outcome['champion']}, not the better v{better}")
    mine = [e for e in reversed(outcome["history"]) if e["version"] in (better, worse)]
    if len(mine) != 2:
        return [*problems, f"expected 2 history entries for v{worse} and v{better}, got {mine}"]
    first, second = mine
    if second["previous_champion"] != first["new_champion"]:
        problems.append(
            f"v{second['version']} was judged against v{second['previous_champion']}, not against "
            f"v{first['new_champion']} left by v{first['version']}'s decision"
        )
    if first["version"] == better:  # the worse one came second: it must lose to the better
        loser = second
        if loser["promoted"] or f"champion v{better}" not in loser["reason"]:
            problems.append(f"the loser's entry does not say it lost to v{better}: {loser}")
    elif not (first["promoted"] and second["promoted"]):
        problems.append(f"worse-then-better must promote both: {mine}")
    return problems


def test_two_processes_promote_one_at_a_time(store, logged, name, tmp_path: Path) -> None:
    out = race(store, logged, name, tmp_path, lock=True, hold_s=0.5)
    assert race_problems(out) == []
    first, second = out["results"]
    assert second["asked"] < first["left"], "the workers did not overlap: the test proves nothing"
    assert second["entered"] >= first["left"]  # the critical sections never overlapped
    assert lock_models(store, name) == [name]  # the lock is gone again


def test_without_the_lock_the_same_race_goes_wrong(store, logged, name, tmp_path: Path) -> None:
    """The control: the harness replaces the lock by nothing; `race_problems` must see it."""
    out = race(store, logged, name, tmp_path, lock=False, hold_s=0.5)
    first, second = out["results"]
    assert second["entered"] < first["left"], "the workers did not overlap"
    problems = race_problems(out)
    assert any("judged against v1" in p for p in problems), problems


# --- the lock ------------------------------------------------------------------------------------


def test_a_stale_lock_is_broken_and_a_live_one_times_out(store, logged, name, monkeypatch):
    candidate(store, logged, name, 0.60)
    client = client_of(store)
    dead = promotion_lock.acquire(client, name, ttl=-1)  # a holder that died: already expired
    t0 = time.monotonic()
    assert candidate(store, logged, name, 0.70).promoted
    assert time.monotonic() - t0 < 10
    assert lock_models(store, name) == [name]  # stale lock and its breaker are gone

    live = promotion_lock.acquire(client, name, ttl=600)
    with pytest.raises(RegistryError) as e:
        promotion_lock.acquire(client, name, timeout=0.5)
    msg = str(e.value)
    assert (
        f"'{name}.promotion-lock'" in msg and live.owner in msg and "delete_registered_model" in msg
    )
    assert "timed out after 0.5 s" in msg and dead.token != live.token

    monkeypatch.setattr(promotion_lock, "TIMEOUT_S", 0.3)
    before = list_versions(store, name)
    with pytest.raises(RegistryError, match="promotion lock"):
        candidate(store, logged, name, 0.90)
    assert list_versions(store, name) == before  # the waiting version was deleted again
    promotion_lock.release(client, name, live)
    assert candidate(store, logged, name, 0.90).promoted


def test_a_failed_decision_releases_the_lock_and_leaves_nothing_behind(
    store, logged, name, monkeypatch
) -> None:
    candidate(store, logged, name, 0.60)
    before = list_versions(store, name)

    def broken(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
    with pytest.raises(RuntimeError, match="went away"):
        candidate(store, logged, name, 0.95)
    monkeypatch.undo()
    assert list_versions(store, name) == before  # no version left behind
    assert champion_version(store, name) == "1"
    assert lock_models(store, name) == [name]
    assert [e["version"] for e in history(store, name)] == ["1"]  # the failure left no entry


def test_lock_models_are_not_models(store, cli, name) -> None:
    with pytest.raises(RegistryError, match="is a promotion lock, not a model"):
        list_versions(store, f"{name}.promotion-lock")
    res = cli("list", "--name", f"{name}.promotion-lock")
    assert res.exit_code == 2 and "reserved" in res.output


# --- history and rollback ------------------------------------------------------------------------


def test_history_records_every_decision(store, logged, name, monkeypatch) -> None:
    monkeypatch.setenv("PAPEROPS_ACTOR", "ci-bot")
    t0 = datetime.now(UTC)
    candidate(store, logged, name, 0.60)  # v1 champion
    candidate(store, logged, name, 0.50)  # v2 loses
    candidate(store, logged, name, 0.80)  # v3 champion
    promote(store, 1, force=True, name=name)
    promote(store, 3, name=name)
    rows = history(store, name)
    assert [(r["action"], r["version"]) for r in rows] == [
        ("promote", "3"),
        ("force", "1"),
        ("register", "3"),
        ("register", "2"),
        ("register", "1"),
    ]
    loser = rows[3]
    assert loser["promoted"] is False and loser["previous_champion"] == loser["new_champion"] == "1"
    assert "does not beat champion v1" in loser["reason"]
    assert (loser["candidate_score"], loser["champion_score"]) == (0.5, 0.6)
    assert loser["metric"] == "val_macro_f1" and loser["run_id"] == logged[0]
    assert rows[1]["previous_champion"] == "3" and rows[1]["new_champion"] == "1"
    assert rows[4]["previous_champion"] is None and "no champion yet" in rows[4]["reason"]
    assert {r["who"] for r in rows} == {"ci-bot"}
    assert all(t0 <= datetime.fromisoformat(r["at"]) <= datetime.now(UTC) for r in rows)
    assert [r["version"] for r in history(store, name, limit=2)] == ["3", "1"]

    monkeypatch.delenv("PAPEROPS_ACTOR")
    candidate(store, logged, name, 0.1)
    assert "@" in history(store, name, limit=1)[0]["who"]


def test_a_long_reason_is_shortened_to_fit_a_tag(store, logged, name) -> None:
    candidate(store, logged, name, 0.60)
    client = client_of(store)
    history_mod.record(client, name, action="promote", version="1", previous_champion=None,
                       new_champion="1", promoted=True, reason="é" * 20_000)  # fmt: skip
    tags = client.get_registered_model(name).tags
    newest = max(k for k in tags if k.startswith(history_mod.PREFIX))
    assert len(tags[newest]) <= history_mod.MAX_VALUE
    assert history(store, name)[0]["reason"].endswith("[truncated]")


def test_rollback_restores_the_previous_champion(store, logged, name) -> None:
    candidate(store, logged, name, 0.60)
    candidate(store, logged, name, 0.80)  # v2 champion
    d = rollback(store, name=name, reason="canary errors")
    assert d.promoted and d.champion_version_before == "2" and champion_version(store, name) == "1"
    assert "rollback (canary errors): champion v2" in d.reason and "-> v1" in d.reason
    newest = history(store, name)[0]
    assert (newest["action"], newest["previous_champion"], newest["new_champion"]) == (
        "rollback",
        "2",
        "1",
    )
    assert rollback(store, name=name).version == "2"  # a second rollback undoes the first
    assert rollback(store, to="v1", name=name).version == "1"
    assert not rollback(store, to=1, name=name).promoted  # already champion: nothing recorded
    assert [r["action"] for r in history(store, name)][:3] == ["rollback"] * 3
    with pytest.raises(RegistryError, match="no version 9; known versions: 1, 2"):
        rollback(store, to=9, name=name)


def test_rollback_without_a_previous_champion_is_a_clear_error(store, logged, name) -> None:
    candidate(store, logged, name, 0.60)
    with pytest.raises(RegistryError, match=r"first champion.*no previous champion"):
        rollback(store, name=name)
    client, run_id = client_of(store), logged[0]
    client.create_registered_model(f"{name}-bare")  # registered outside paperops: no history
    for _ in range(2):
        client.create_model_version(f"{name}-bare", source=logged[1], run_id=run_id)
    client.set_registered_model_alias(f"{name}-bare", "champion", "2")
    with pytest.raises(RegistryError, match=r"no promotion history.*--to VERSION"):
        rollback(store, name=f"{name}-bare")
    assert rollback(store, to=1, name=f"{name}-bare").promoted
    assert history(store, f"{name}-bare")[0]["action"] == "rollback"


def test_cli_history_and_rollback(cli, store, logged, name) -> None:
    candidate(store, logged, name, 0.60)
    candidate(store, logged, name, 0.50)
    candidate(store, logged, name, 0.80)
    res = cli("history", "--name", name)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["when", "who", "action", "version", "champion", "reason"]
    assert len(lines) == 4
    assert "register" in lines[1] and "v1 -> v3" in lines[1] and "beats champion v1" in lines[1]
    assert "v1 (kept)" in lines[2] and "does not beat" in lines[2]
    assert "- -> v1" in lines[3]

    res = cli("rollback", "--name", name, "--reason", "bad canary")
    assert res.exit_code == 0, res.output
    assert (
        "rollback (bad canary): champion v3" in res.output and champion_version(store, name) == "1"
    )
    res = cli("history", "--name", name, "--json", "--limit", "1")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 1 and rows[0]["action"] == "rollback" and "bad canary" in rows[0]["reason"]

    res = cli("rollback", "--to", "9", "--name", name)
    assert res.exit_code == 2 and "error:" in res.output and "known versions: 1, 2, 3" in res.output
    res = cli("history", "--name", f"{name}-missing")
    assert res.exit_code == 2 and "no registered model" in res.output
