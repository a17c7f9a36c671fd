"""The `paperops` CLI, end to end in-process: help, version, prepare, validate, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from paperops import __version__
from paperops.cli import app
from tests.conftest import CONFIG_DIR, DEFAULT_COUNTS, make_records, write_jsonl

N_ROWS = sum(DEFAULT_COUNTS.values())


def command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command registered on the app (new ones are covered automatically)."""
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():  # a group (typer vendors click)
            walk(sub, (*path, name))

    walk(root, ())
    return paths


COMMANDS = command_paths()


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(CONFIG_DIR))
    monkeypatch.delenv("PAPEROPS_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PAPEROPS_LOG_FORMAT", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args), prog_name="paperops")


def overrides(tmp_path: Path, raw: Path, **extra: object) -> list[str]:
    values = {
        "data.raw_paths": raw,
        "data.output_dir": tmp_path / "processed",
        "data.min_count": 4,
        "data.validation.report_path": tmp_path / "reports" / "validation.json",
        "data.validation.min_rows_total": 10,
        "data.validation.min_train_rows_per_class": 5,
        **extra,
    }
    return [f"{k}='{v}'" if isinstance(v, Path) else f"{k}={v}" for k, v in values.items()]


# --- help and version -----------------------------------------------------------------------


def test_every_command_is_found() -> None:
    assert {
        (),
        ("data",),
        ("data", "prepare"),
        ("data", "validate"),
        ("config",),
        ("config", "show"),
    } <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "paperops")
def test_help(runner: CliRunner, path: tuple[str, ...]) -> None:
    result = invoke(runner, *path, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: {' '.join(('paperops', *path))}" in result.stdout
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    assert cmd.help or cmd.short_help, f"{' '.join(path)} has no help text"


def test_no_args_shows_help(runner: CliRunner) -> None:
    result = invoke(runner)
    assert "Usage: paperops" in result.output
    assert "data" in result.output and "config" in result.output


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert result.stdout == f"paperops {__version__}\n"


def test_unknown_command(runner: CliRunner) -> None:
    result = invoke(runner, "data", "frobnicate")
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.output


# --- data prepare / validate ----------------------------------------------------------------


def test_prepare_then_validate(runner: CliRunner, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", make_records(DEFAULT_COUNTS))
    args = overrides(tmp_path, raw)
    result = invoke(runner, "data", "prepare", *args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "processed"
    assert result.stdout.startswith(f"prepared {N_ROWS} papers, 4 labels -> {out} (")
    assert "  train=" in result.stdout
    assert f"  data card: {out / 'data_card.md'}" in result.stdout
    assert "dropped" not in result.stdout
    assert "read 62 records" in result.stderr  # logs go to stderr, not into the command output
    assert "read 62 records" not in result.stdout

    result = invoke(runner, "data", "validate", *args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"OK: {out}: {N_ROWS} rows pass every rule\n"
    report = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert (report["ok"], report["rows"], report["violations"]) == (True, N_ROWS, [])


def test_prepare_skip_reports_dropped_lines(runner: CliRunner, tmp_path: Path) -> None:
    records = make_records(DEFAULT_COUNTS)
    lines = [*records[:5], "{bad json", *records[5:], "[]", b"\xff", {"id": "2101.99999"}]
    raw = write_jsonl(tmp_path / "raw.jsonl", lines)
    result = invoke(runner, "data", "prepare", "--on-error", "skip", *overrides(tmp_path, raw))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"prepared {N_ROWS} papers")
    dropped = next(line for line in result.stdout.splitlines() if "dropped:" in line)
    assert dropped == "  dropped: json=2, utf8=1, required_fields=1"


def test_prepare_on_error_from_config(runner: CliRunner, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", [*make_records(DEFAULT_COUNTS), "{bad"])
    args = overrides(tmp_path, raw, **{"data.on_error": "skip"})
    result = invoke(runner, "data", "prepare", *args)
    assert result.exit_code == 0, result.output
    assert "dropped: json=1" in result.stdout


def test_prepare_bad_line_exits_2_naming_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    lines = [*make_records(DEFAULT_COUNTS)[:7], '{"id": "2101.00001", "title": 3}']
    raw = write_jsonl(tmp_path / "raw.jsonl", lines)
    result = invoke(runner, "data", "prepare", *overrides(tmp_path, raw))
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: {raw}:8: missing required field(s) abstract, "
        "categories, update_date [required_fields]"
    )
    assert result.stdout == ""
    assert not (tmp_path / "processed").exists()


def test_prepare_unknown_category_exits_2_with_rule(runner: CliRunner, tmp_path: Path) -> None:
    records = make_records(DEFAULT_COUNTS)
    records[9]["categories"] = "cs.XX"
    raw = write_jsonl(tmp_path / "raw.jsonl", records)
    result = invoke(runner, "data", "prepare", *overrides(tmp_path, raw))
    assert result.exit_code == 2
    assert "[known_category]" in result.stderr
    assert f"raw.jsonl line 10 id={records[9]['id']}: 'cs.XX'" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--on-error", "ignore"], "on_error must be 'raise' or 'skip', got 'ignore'"),
        (["data.min_count=2"], "min_count must be >= 4"),
        (["data.label_level=group"], "label_level must be one of"),
    ],
    ids=["on-error", "min-count", "label-level"],
)
def test_prepare_invalid_setting_exits_2(
    runner: CliRunner, tmp_path: Path, extra: list[str], message: str
) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", make_records(DEFAULT_COUNTS))
    result = invoke(runner, "data", "prepare", *overrides(tmp_path, raw), *extra)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


def test_prepare_missing_raw_file(runner: CliRunner, tmp_path: Path) -> None:
    raw = tmp_path / "nope.jsonl"
    result = invoke(runner, "data", "prepare", *overrides(tmp_path, raw))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {raw}: file not found: fix or drop it in data.raw_paths [file_exists]\n"
    )


@pytest.mark.parametrize("command", [("data", "prepare"), ("data", "validate"), ("config", "show")])
def test_bad_override_exits_2(runner: CliRunner, command: tuple[str, ...]) -> None:
    result = invoke(runner, *command, "data.no_such_key=1")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: invalid configuration (overrides: ['data.no_such_key=1']): "
        "Could not override 'data.no_such_key'."
    )


def test_bad_override_syntax_exits_2(runner: CliRunner) -> None:
    result = invoke(runner, "config", "show", "data.min_count=[1,")
    assert result.exit_code == 2
    assert "error: invalid configuration" in result.stderr


def test_validate_tampered_dir_exits_1_and_writes_report(runner: CliRunner, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", make_records(DEFAULT_COUNTS))
    args = overrides(tmp_path, raw)
    assert invoke(runner, "data", "prepare", *args).exit_code == 0
    out = tmp_path / "processed"
    train = pd.read_parquet(out / "train.parquet")
    test = pd.read_parquet(out / "test.parquet")
    test.loc[0, "id"] = train.loc[0, "id"]
    test.to_parquet(out / "test.parquet", index=False)

    result = invoke(runner, "data", "validate", *args)
    assert result.exit_code == 1
    assert f"FAILED: {out}: 1 rule(s) violated" in result.stderr
    assert "[no_id_overlap] train/test: the same id is in two splits (1 row(s))" in result.stderr
    report = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert report["ok"] is False
    assert [(v["rule"], v["examples"]) for v in report["violations"]] == [
        ("no_id_overlap", [train.loc[0, "id"]])
    ]


def test_validate_threshold_from_override(runner: CliRunner, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", make_records(DEFAULT_COUNTS))
    assert invoke(runner, "data", "prepare", *overrides(tmp_path, raw)).exit_code == 0
    args = overrides(tmp_path, raw, **{"data.validation.min_rows_total": 1000})
    result = invoke(runner, "data", "validate", *args)
    assert result.exit_code == 1
    assert f"[min_rows_total] all: {N_ROWS} rows < required 1000" in result.stderr


def test_validate_before_prepare_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "data", "validate", *overrides(tmp_path, tmp_path / "raw.jsonl"))
    assert result.exit_code == 2
    assert "run `paperops data prepare` first" in result.stderr
    assert not (tmp_path / "reports").exists()


def test_validate_raw_bad_file_exits_1_listing_rules(runner: CliRunner, tmp_path: Path) -> None:
    records = make_records({"cs.LG": 4})
    records[1]["categories"] = "cs.XX"
    raw = write_jsonl(tmp_path / "raw.jsonl", [*records, "{", {"id": "2101.00001"}])
    result = invoke(
        runner,
        "data",
        "validate",
        "--raw",
        str(raw),
        *overrides(tmp_path, tmp_path / "unused.jsonl"),
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"FAILED: {raw}: 3 rule(s) violated")
    for rule in ("[json]", "[required_fields]", "[known_category]"):
        assert rule in result.stderr
    assert f"e.g. {raw}:5: malformed JSON" in result.stderr
    assert not (tmp_path / "reports").exists()  # --raw writes nothing


def test_validate_raw_good_file(runner: CliRunner, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl.gz", make_records(DEFAULT_COUNTS), gzip=True)
    result = invoke(runner, "data", "validate", "--raw", str(raw))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"OK: {raw}: {N_ROWS} rows pass every rule\n"


# --- config and logging options -------------------------------------------------------------


def test_config_show_prints_resolved_yaml(runner: CliRunner) -> None:
    result = invoke(runner, "config", "show", "data.min_count=7", "seed=3", "data.split=time")
    assert result.exit_code == 0, result.output
    assert "${" not in result.stdout
    cfg = yaml.safe_load(result.stdout)
    assert cfg["data"]["min_count"] == 7
    assert cfg["data"]["split"] == "time"
    assert cfg["seed"] == 3
    assert cfg["data"]["seed"] == 3  # ${seed} resolved after the override
    assert cfg["data"]["fractions"] == {"train": 0.7, "val": 0.1, "calibration": 0.1, "test": 0.1}
    assert cfg["data"]["validation"]["report_path"] == "reports/data/validation.json"
    assert set(cfg) >= {"paths", "data", "model", "trainer", "logger", "seed"}


def test_bad_log_level_exits_2(runner: CliRunner) -> None:
    result = invoke(runner, "--log-level", "LOUD", "config", "show")
    assert result.exit_code == 2
    assert "log level 'LOUD' is not one of" in result.stderr


def test_json_logs_on_stderr(runner: CliRunner, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", make_records(DEFAULT_COUNTS))
    result = invoke(runner, "--log-format", "json", "data", "prepare", *overrides(tmp_path, raw))
    assert result.exit_code == 0, result.output
    logs = [json.loads(line) for line in result.stderr.splitlines()]
    msgs = [(e["level"], e["logger"], e["msg"]) for e in logs]
    assert (
        "info",
        "paperops.data.prepare",
        f"read {N_ROWS} records from {raw} (0 lines skipped)",
    ) in msgs
    assert not any(line.startswith("{") for line in result.stdout.splitlines())
