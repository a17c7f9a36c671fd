"""The model registry and its champion gate, on a real SQLite MLflow store (no mocks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from paperops.cli.models import models_app
from paperops.models.base import load_classifier
from paperops.tracking.promotion import promote
from paperops.tracking.registry import (
    CHAMPION,
    RegistryError,
    download_bundle,
    list_versions,
    show,
)
from paperops.tracking.runs import resolve_tracking_uri
from tests.unit.tracking.conftest import candidate, champion_version


def test_first_candidate_becomes_champion_with_provenance_tags(store, logged, name) -> None:
    d = candidate(store, logged, name, 0.8)
    assert (d.version, d.promoted, d.champion_version_before, d.champion_score) == (
        "1",
        True,
        None,
        None,
    )
    assert "no champion yet" in d.reason and "0.8" in d.reason
    assert champion_version(store, name) == "1"
    info = show(store, CHAMPION, name)
    tags = info["tags"]
    assert tags["metric"] == "val_macro_f1" and float(tags["score"]) == 0.8
    assert tags["family"] == "tfidf" and tags["run_id"] == logged[0]
    assert len(tags["data_hash"]) == 64 and tags["git_sha"]
    assert info["run"]["metrics"]["val_macro_f1"] == 0.8
    assert info["description"] == d.reason


def test_gate_refuses_a_worse_model_and_promotes_a_better_one(store, logged, name) -> None:
    candidate(store, logged, name, 0.80)
    worse = candidate(store, logged, name, 0.70)
    assert not worse.promoted
    assert (worse.candidate_score, worse.champion_score) == (0.70, 0.80)
    assert "0.7" in worse.reason and "0.8" in worse.reason and "stays v1" in worse.reason
    assert champion_version(store, name) == "1"

    tie = candidate(store, logged, name, 0.80)
    assert not tie.promoted and champion_version(store, name) == "1"

    better = candidate(store, logged, name, 0.90)
    assert better.promoted and better.champion_version_before == "1"
    assert "0.9" in better.reason and "0.8" in better.reason
    assert champion_version(store, name) == better.version == "4"

    rows = list_versions(store, name)
    assert [r["version"] for r in rows] == ["4", "3", "2", "1"]
    assert [r["aliases"] for r in rows] == [[CHAMPION], [], [], []]
    assert [r["score"] for r in rows] == [0.9, 0.8, 0.7, 0.8]
    assert all(r["family"] == "tfidf" and r["created"] for r in rows)


def test_a_champion_of_another_label_level_is_never_replaced(store, logged, name) -> None:
    candidate(store, logged, name, 0.60, tags={"label_level": "archive"})
    other = candidate(store, logged, name, 0.95, tags={"label_level": "category"})
    assert not other.promoted and champion_version(store, name) == "1"
    assert "category-level model" in other.reason and "archive-level" in other.reason
    assert "logger.registered_model" in other.reason
    same = candidate(store, logged, name, 0.70, tags={"label_level": "archive"})
    assert same.promoted and champion_version(store, name) == "3"


def test_lower_is_better_metric(store, logged, name) -> None:
    kw = {"metric": "val_perplexity", "higher_is_better": False}
    assert candidate(store, logged, name, 30.0, **kw).promoted
    refused = candidate(store, logged, name, 35.0, **kw)
    assert not refused.promoted and "lower is better" in refused.reason
    assert candidate(store, logged, name, 25.0, **kw).promoted
    assert champion_version(store, name) == "3"


def test_champion_scored_on_another_metric_falls_back_to_its_run(store, logged, name) -> None:
    candidate(store, logged, name, 0.8, metric="val_macro_f1")
    # the champion's run logged val_accuracy=0.85
    d = candidate(store, logged, name, 0.84, metric="val_accuracy")
    assert not d.promoted and d.champion_score == 0.85
    d = candidate(store, logged, name, 0.5, metric="test_something_unlogged")
    assert not d.promoted and "no test_something_unlogged score" in d.reason


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "high"])
def test_non_finite_score_is_refused_before_anything_is_written(store, logged, name, bad) -> None:
    with pytest.raises(ValueError, match="score must be"):
        candidate(store, logged, name, bad)
    with pytest.raises(RegistryError, match="paperops train"):
        list_versions(store, name)


def test_failed_tagging_of_a_first_candidate_leaves_no_model(store, logged, name, monkeypatch):
    real = MlflowClient.set_model_version_tag

    def flaky(self, model, version, key, value):
        if key == "score":
            raise OSError("disk full")
        return real(self, model, version, key, value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", flaky)
    with pytest.raises(OSError, match="disk full"):
        candidate(store, logged, name, 0.8)
    monkeypatch.undo()
    with pytest.raises(RegistryError, match="no registered model"):
        list_versions(store, name)


def test_manual_promotion_refuses_worse_unless_forced(store, logged, name) -> None:
    candidate(store, logged, name, 0.8)
    candidate(store, logged, name, 0.9)  # v2 champion
    with pytest.raises(RegistryError, match=r"worse than champion v2.*--force"):
        promote(store, 1, name=name)
    assert champion_version(store, name) == "2"

    forced = promote(store, "1", force=True, name=name)
    assert forced.promoted and forced.champion_version_before == "2"
    assert "forced" in forced.reason
    assert champion_version(store, name) == "1"

    again = promote(store, "v2", name=name)  # better than the champion: no force needed
    assert again.promoted and champion_version(store, name) == "2"
    assert not promote(store, 2, name=name).promoted  # already champion

    with pytest.raises(RegistryError, match="no version 7; known versions: 1, 2"):
        promote(store, 7, name=name)


def test_download_bundle_gives_a_loadable_bundle(store, logged, name, tmp_path: Path) -> None:
    candidate(store, logged, name, 0.8)
    path = download_bundle(store, CHAMPION, tmp_path / "served", name=name)
    assert path.is_relative_to(tmp_path / "served" / "v1")
    clf = load_classifier(path)
    assert clf.family == "tfidf" and clf.logits(["Neural networks\nwe propose"]).shape[0] == 1
    # a second download replaces the first cleanly
    again = download_bundle(store, "1", tmp_path / "served", name=name)
    assert again == path and load_classifier(again).labels == clf.labels
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == ["v1"]


def test_missing_registry_or_champion_says_to_train(store, name, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="paperops train"):
        download_bundle(store, CHAMPION, tmp_path, name=name)
    uri = resolve_tracking_uri(store["tracking_uri"])
    MlflowClient(uri, uri).create_registered_model(name)
    with pytest.raises(RegistryError, match=r"no champion yet.*paperops train"):
        show(store, CHAMPION, name)
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        show(store, "staging", name)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_list_show_promote(cli, store, logged, name) -> None:
    candidate(store, logged, name, 0.8)
    candidate(store, logged, name, 0.9)  # v2 champion

    res = cli("list", "--name", name)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split()[:3] == ["version", "aliases", "metric"]
    assert lines[1].split()[:3] == ["*", "2", "champion"]
    assert lines[2].split()[:2] == ["1", "val_macro_f1"]

    res = cli("show", "--name", name)
    assert res.exit_code == 0, res.output
    assert f"{name} v2  [champion]" in res.output and "val_macro_f1=0.9" in res.output

    res = cli("show", "1", "--name", name, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["version"] == "1" and info["score"] == 0.8 and info["run"]["metrics"]

    res = cli("promote", "1", "--name", name)
    assert res.exit_code == 2
    assert "error: refusing to promote v1" in res.output and "--force" in res.output

    res = cli("promote", "1", "--force", "--name", name)
    assert res.exit_code == 0, res.output
    assert "forced" in res.output
    assert champion_version(store, name) == "1"

    res = cli("promote", "9", "--name", name)
    assert res.exit_code == 2 and "known versions: 1, 2" in res.output


def test_cli_without_a_registry_fails_cleanly(cli, name) -> None:
    res = cli("list", "--name", name)
    assert res.exit_code == 2
    assert "error: no registered model" in res.output and "paperops train" in res.output
    res = cli("show", "--name", name)
    assert res.exit_code == 2 and "paperops train" in res.output


def test_cli_bad_override_fails_cleanly() -> None:
    app = typer.Typer()
    app.add_typer(models_app, name="models")
    res = CliRunner().invoke(app, ["models", "list", "logger.nope.deeper=1"])
    assert res.exit_code == 2 and "error:" in res.output


def test_reading_a_missing_store_does_not_create_one(tmp_path: Path) -> None:
    cfg = {"tracking_uri": f"sqlite:///{tmp_path}/none/mlflow.db", "registered_model": "m"}
    with pytest.raises(RegistryError, match=r"no MLflow store .*paperops train"):
        list_versions(cfg)
    assert not (tmp_path / "none").exists()
