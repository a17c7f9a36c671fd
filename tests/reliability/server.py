"""`paperops serve` as a child process the reliability tests can hurt: kill -9 it, read its
memory, start it under a file-size limit (a full disk), restart it on the same request log.

Its output goes through a pipe into `<base>/server.log` (written by this process, so a file-size
limit on the server does not cut its own log short).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from paperops.serve.launcher import ServerStartError, free_port, paperops_command, wait_ready
from tests.integration.serve_helpers import TEST_ENV

# uvicorn re-raises SIGTERM once its graceful shutdown is done, so a clean stop ends with -15
CLEAN_EXIT = (0, -signal.SIGTERM)


class ServerProcess:
    """One `paperops serve` child on 127.0.0.1; `start()` waits until `ready_path` is 200."""

    def __init__(
        self,
        base: Path,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        file_size_limit: int | None = None,
    ) -> None:
        self.base = base
        self.args = list(args)
        self.env = env or {}
        self.file_size_limit = file_size_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._drain: threading.Thread | None = None
        base.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def start(self, *, ready_path: str = "/readyz", timeout: float = 180.0) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [*paperops_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        env = os.environ | TEST_ENV | {"PYTHONUNBUFFERED": "1"} | self.env
        limit = self.file_size_limit

        def limit_files() -> None:  # in the child, before exec: its writes past `limit` fail
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        # the command is our own CLI with test arguments, never user input
        self.proc = subprocess.Popen(
            [*cmd, *self.args],
            cwd=self.base,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_files,  # runs between fork and exec: only setrlimit, no locks
        )
        self._drain = threading.Thread(target=self._copy_output, args=(self.proc.stdout,))
        self._drain.start()
        try:
            wait_ready(self.proc, self.url + ready_path, timeout=timeout, tail=self.tail)
        except ServerStartError:
            self.kill()  # also waits for the output to be copied
            raise
        return self.url

    def _copy_output(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with self.log_path.open("ab") as out:
            for line in stream:
                out.write(line)
                out.flush()

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the server process now (Linux /proc)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` and wait for the process to end; its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        if self._drain is not None:
            self._drain.join(10)
        return code

    def stop(self) -> int:
        """A clean stop (SIGTERM: queued batches finish, the request log is flushed)."""
        return self.kill(signal.SIGTERM)


@contextlib.contextmanager
def running(server: ServerProcess, **start_kwargs: float | str) -> Iterator[str]:
    """Start `server`; stop it cleanly on exit unless the test already stopped or killed it."""
    try:
        yield server.start(**start_kwargs)  # type: ignore[arg-type]
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def log_overrides(base: Path, url: str | None = None) -> list[str]:
    """One thread and the server's files under `base`; the request log at `url` (quoted: a
    SQLite URI has `?`, `&` and `=` in it)."""
    url = url or f"sqlite:///{base}/requests.db"
    return [
        "serve.threads=1",
        f"serve.request_log.url='{url}'",
        f"paths.models={base}/models",
        f"paths.data={base}/data",
        f"serve.export_dir={base}/models/export",
    ]


def db_rows(path: Path, sql: str, *params: object) -> list[tuple]:
    """Rows of a query on the request log, read by a fresh connection as the drift job would."""
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()
