"""Stale temp siblings of killed runs are removed by the next atomic write, live ones never."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from paperops.io import atomic_dir, atomic_write_text, remove_stale_temps


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make(parent: Path, name: str, is_dir: bool = True) -> Path:
    p = parent / name
    if is_dir:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "half.parquet").write_bytes(b"PAR1 partial")
    else:
        p.write_text("partial")
    return p


def test_atomic_dir_removes_siblings_of_dead_runs_only(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    stale = [
        _make(tmp_path, f".processed.tmp-{dead}-abc123"),
        _make(tmp_path, f".processed.old-{dead}-def456"),
        _make(tmp_path, f".processed.tmp-{dead}-ghi789.tmp", is_dir=False),
    ]
    keep = [
        _make(tmp_path, f".processed.tmp-{live}-running"),  # a live writer (here: this process)
        _make(tmp_path, ".processed.tmp-legacyname"),  # no pid: not provably dead
        _make(tmp_path, f".other.tmp-{dead}-abc123"),  # another output's temp
        _make(tmp_path, f".processed.tmp-{dead}x.tmp-{dead}-a"),  # prefix of another name
    ]
    with atomic_dir(tmp_path / "processed") as tmp:
        assert tmp.name.startswith(f".processed.tmp-{live}-")
        (tmp / "a.txt").write_text("new")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)
    assert (tmp_path / "processed" / "a.txt").read_text() == "new"


def test_atomic_write_text_removes_stale_file_temps(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = _make(tmp_path, f".metrics.json.tmp-{dead}-x1y2.tmp", is_dir=False)
    atomic_write_text(tmp_path / "metrics.json", "{}\n")
    assert not stale.exists()
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_live_subprocess_temp_is_kept(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = _make(tmp_path, f".processed.tmp-{proc.pid}-abcd")
        assert remove_stale_temps(tmp_path / "processed") == []
        assert live.exists()
    finally:
        proc.kill()
        proc.wait()
    assert remove_stale_temps(tmp_path / "processed") == [live]
    assert not live.exists()


def test_remove_stale_temps_without_parent(tmp_path: Path) -> None:
    assert remove_stale_temps(tmp_path / "missing" / "out") == []
