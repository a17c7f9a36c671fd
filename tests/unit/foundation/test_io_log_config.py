"""Atomic writes, logging setup and config composition."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from paperops.config import ConfigError, config_dir, load_config
from paperops.io import atomic_dir, atomic_write_text
from paperops.log import setup_logging
from tests.conftest import CONFIG_DIR

# --- atomic_write_text ----------------------------------------------------------------------


def test_atomic_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "report.json"
    atomic_write_text(path, "first\n")
    assert path.read_text() == "first\n"
    atomic_write_text(path, "second – ünïcode\n")
    assert path.read_text(encoding="utf-8") == "second – ünïcode\n"
    assert os.listdir(path.parent) == ["report.json"]


def test_atomic_write_error_leaves_old_content_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "half written \ud800 then fails")  # a lone surrogate cannot encode
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_write_error_on_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(tmp_path / "new.txt", "\udcff")
    assert os.listdir(tmp_path) == []


# --- atomic_dir -----------------------------------------------------------------------------


def test_atomic_dir_creates_new_output(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".processed.tmp-")
        assert not out.exists()  # nothing visible until the body finished
        (tmp / "train.parquet").write_text("x")
    assert sorted(os.listdir(tmp_path)) == ["processed"]
    assert os.listdir(out) == ["train.parquet"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_atomic_dir_swaps_whole_directory(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "shared.txt").write_text("old")
    with atomic_dir(out) as tmp:
        assert (out / "old.txt").read_text() == "old"  # old output still complete meanwhile
        (tmp / "shared.txt").write_text("new")
    assert sorted(os.listdir(out)) == ["shared.txt"]
    assert (out / "shared.txt").read_text() == "new"
    assert os.listdir(tmp_path) == ["processed"]  # no .tmp- or .old- siblings


def test_atomic_dir_error_keeps_old_output(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    out.mkdir()
    (out / "labels.json").write_text("{}")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(out) as tmp:
        (tmp / "labels.json").write_text('{"half": ')
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["processed"]
    assert (out / "labels.json").read_text() == "{}"


def test_atomic_dir_error_without_old_output_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "processed") as tmp:
        (tmp / "part").write_text("x")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


# --- logging --------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("PAPEROPS_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PAPEROPS_LOG_FORMAT", raising=False)
    return monkeypatch


def test_json_logs_are_parseable_lines(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", "json")
    log = logging.getLogger("paperops.test")
    log.info("read %d records", 3, extra={"path": Path("raw.jsonl"), "rows": 3})
    log.debug("not shown")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed – ünïcode")
    out, err = capsys.readouterr()
    assert out == ""
    lines = [json.loads(line) for line in err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert {k: first[k] for k in ("level", "logger", "msg", "rows", "path")} == {
        "level": "info",
        "logger": "paperops.test",
        "msg": "read 3 records",
        "rows": 3,
        "path": "raw.jsonl",
    }
    assert first["ts"].endswith("+00:00")
    assert "exc" not in first
    assert (second["level"], second["msg"]) == ("error", "failed – ünïcode")
    assert second["exc"].startswith("Traceback") and "ValueError: bad" in second["exc"]


def test_console_logs_go_to_stderr(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging()
    logging.getLogger("paperops.test").warning("careful")
    out, err = capsys.readouterr()
    assert out == ""
    assert "paperops.test: careful" in err


@pytest.mark.parametrize(
    ("env", "arg", "expected"),
    [
        (None, None, logging.INFO),
        ("WARNING", None, logging.WARNING),
        ("debug", None, logging.DEBUG),
        ("ERROR", "debug", logging.DEBUG),  # the argument wins over the environment
    ],
)
def test_log_level_from_env_or_argument(
    clean_env: pytest.MonkeyPatch, env: str | None, arg: str | None, expected: int
) -> None:
    if env is not None:
        clean_env.setenv("PAPEROPS_LOG_LEVEL", env)
    setup_logging(arg, "json")
    assert logging.getLogger().level == expected
    assert logging.getLogger("httpx").level == max(logging.WARNING, expected)


def test_env_level_filters_json_output(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("PAPEROPS_LOG_LEVEL", "WARNING")
    clean_env.setenv("PAPEROPS_LOG_FORMAT", "json")
    setup_logging()
    log = logging.getLogger("paperops.test")
    log.info("hidden")
    log.warning("shown")
    msgs = [json.loads(line)["msg"] for line in capsys.readouterr().err.splitlines()]
    assert msgs == ["shown"]


def test_setup_logging_is_idempotent(clean_env: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    setup_logging("info", "json")
    setup_logging("info", "console")
    setup_logging("info", "json")
    ours = [h for h in root.handlers if getattr(h, "_paperops", False)]
    assert len(ours) == 1
    assert len(root.handlers) == before + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": "LOUD"}, "log level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({"fmt": "xml"}, "log format 'xml' is not one of 'console', 'json'"),
    ],
)
def test_bad_logging_settings(clean_env: pytest.MonkeyPatch, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setup_logging(**kwargs)


def test_bad_level_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PAPEROPS_LOG_LEVEL", "verbose")
    with pytest.raises(ValueError, match="log level 'VERBOSE'"):
        setup_logging()


# --- config ---------------------------------------------------------------------------------


@pytest.fixture
def repo_configs(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(CONFIG_DIR))
    return CONFIG_DIR


def test_load_config_defaults(repo_configs: Path) -> None:
    cfg = load_config()
    assert cfg.seed == 42
    assert cfg.data.seed == 42
    assert cfg.data.min_count == 50
    assert cfg.data.label_level == "archive"
    assert cfg.data.output_dir == "data/processed"
    assert cfg.model.family == "tfidf"


def test_load_config_overrides_compose(repo_configs: Path) -> None:
    cfg = load_config(
        [
            "data.min_count=7",
            "data.split=time",
            "seed=5",
            "data.fractions.train=0.6",
            "data.fractions.test=0.2",
            "paths.data=/tmp/elsewhere",
        ]
    )
    assert (cfg.data.min_count, cfg.data.split, cfg.seed, cfg.data.seed) == (7, "time", 5, 5)
    assert dict(cfg.data.fractions) == {"train": 0.6, "val": 0.1, "calibration": 0.1, "test": 0.2}
    assert cfg.data.output_dir == "/tmp/elsewhere/processed"  # interpolations resolved


def test_load_config_env_interpolation(repo_configs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPEROPS_SHARED", "/data/shared")
    cfg = load_config()
    assert list(cfg.data.raw_paths) == [
        "/data/shared/data/arxiv/arxiv-metadata.jsonl.gz",
        "/data/shared/data/arxiv/arxiv-augment.jsonl.gz",
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.no_such_key=1", "Could not override 'data.no_such_key'"),
        ("data=nope", "Could not find 'data/nope'"),
        ("data.min_count=[1,", "data.min_count=[1,"),
    ],
)
def test_load_config_bad_override(repo_configs: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"invalid configuration (overrides: ['{override}']): ")
    assert message in str(info.value)


def test_config_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.yaml").write_text("seed: 7\nname: custom\n")
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path.resolve()
    cfg = load_config(["seed=8"])
    assert (cfg.seed, cfg.name) == (8, "custom")


def test_config_dir_env_without_config_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    assert config_dir() == CONFIG_DIR.resolve()  # the checkout's configs (editable install)


def test_atomic_dir_restores_old_output_when_final_rename_fails(tmp_path, monkeypatch):
    import os

    from paperops.io import atomic_dir

    out = tmp_path / "processed"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the swap of the new dir into place (a disk error, say)
            raise OSError("injected rename failure")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="injected"), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out / "old.txt").read_text() == "old"
    assert not (out / "new.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]
