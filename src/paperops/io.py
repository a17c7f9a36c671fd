"""Atomic file and directory writes (a reader never sees a half-written output), and file
checksums.

Temp siblings are named `.NAME.tmp-PID-XXXX` (and `.NAME.old-PID-XXXX` during a directory
swap). A run killed with SIGKILL cannot remove its own; the next write of the same output
removes those whose PID is no longer running, never one of a live run (a concurrent run, a
DDP peer rank or this process).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp siblings of `path` left by dead processes; returns what was removed."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        prefix = f".{path.name}.{kind}-"
        for entry in path.parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            pid = entry.name[len(prefix) :].split("-", 1)[0]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue  # not ours (or an older naming) or still running: leave it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _prefix(path: Path, kind: str) -> str:
    return f".{path.name}.{kind}-{os.getpid()}-"


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path, "tmp"), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs should be as readable as any file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp sibling directory; on success it replaces `path`, on error it is removed.

    The swap is two renames (old out of the way, new in), so `path` is either the complete old
    output or the complete new one; an interrupted run leaves only a `.tmp-` sibling behind
    (or, killed between the two renames, an `.old-` one and no `path`: never a partial one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path, "tmp")))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the output should be as readable as any other dir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path, "old")))
        os.replace(path, old / "x")
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:  # put the previous output back rather than leave nothing
            os.replace(old / "x", path)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (data files are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
