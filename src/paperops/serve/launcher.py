"""Run `paperops serve` as a child process on loopback and wait until it is ready.

Used by `paperops demo`, the API tests and the benchmarks, so they all drive the real server
the way a user starts it (CLI, uvicorn, lifespan) rather than an in-process test client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

import httpx
import typer


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; carries the tail of its output."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def paperops_command() -> list[str]:
    """The CLI of this interpreter's paperops (works in a venv without activating it)."""
    exe = Path(sys.executable).with_name("paperops")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "paperops.cli"]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    timeout: float,
    tail: Callable[[], str],
    name: str = "the server",
) -> None:
    """Poll `url` until it answers 200; ServerStartError (with `tail()` of the output) when the
    process exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerStartError(f"{name} exited with {proc.returncode}:\n{tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ServerStartError(f"{name} not ready after {timeout:.0f} s:\n{tail()}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_process(
    cmd: Sequence[str],
    base_url: str,
    *,
    ready_path: str = "/readyz",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 180.0,
    stop_timeout: float = 30.0,
) -> Iterator[str]:
    """Start any HTTP server command; yield `base_url` once `ready_path` answers 200.

    Stops it with SIGTERM (for paperops a clean shutdown: the request log is flushed) and kills
    it only if it has not exited within `stop_timeout`.
    """
    own_log = log_path is None
    if log_path is None:
        import tempfile

        fd, name = tempfile.mkstemp(prefix="paperops-serve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    proc_env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    with log_path.open("wb") as log:
        # the command is built by the caller (our own CLI or benchmark), never from user input
        proc = subprocess.Popen(  # noqa: S603  # nosec B603 # our own CLI's argv, no shell
            list(cmd), cwd=cwd, env=proc_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(
                proc,
                base_url + ready_path,
                timeout=ready_timeout,
                tail=lambda: _tail(log_path),
                name=cmd[0],
            )
            yield base_url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if own_log:
                with contextlib.suppress(OSError):
                    log_path.unlink()


@contextlib.contextmanager
def running_server(
    args: Sequence[str], *, port: int | None = None, **kwargs: object
) -> Iterator[str]:
    """`paperops serve ARGS` on 127.0.0.1:PORT; yields the base URL once /readyz is 200.

    `kwargs` go to `running_process` (env, cwd, log_path, ready_timeout, stop_timeout).
    """
    port = port or free_port()
    cmd = [*paperops_command(), "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with running_process(cmd, f"http://127.0.0.1:{port}", **kwargs) as base:  # type: ignore[arg-type]
        yield base


def run_server(
    app: FastAPI,
    host: str,
    port: int,
    *,
    timeout_graceful_shutdown: float = 10.0,
    timeout_keep_alive: float = 5.0,
    access_log: bool = False,
    on_started: Any = None,
) -> None:
    """uvicorn in this process until SIGINT/SIGTERM; `on_started(url)` once the socket listens.

    Logging stays ours (`log_config=None`: uvicorn's loggers propagate to the paperops handler);
    the access log is off by default: every request is in the request log and the metrics.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=int(max(1, round(timeout_graceful_shutdown))),
        timeout_keep_alive=int(max(1, round(timeout_keep_alive))),
        lifespan="on",
    )
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started and on_started is not None:
            bound = port
            with contextlib.suppress(IndexError, AttributeError, OSError):  # port 0: OS-picked
                bound = int(server.servers[0].sockets[0].getsockname()[1])
            shown = f"[{host}]" if ":" in host else host
            on_started(f"http://{shown}:{bound}")

    threading.Thread(target=announce, name="paperops-announce", daemon=True).start()
    server.run()
    if not server.started:  # could not bind, or the lifespan failed: uvicorn logged why
        raise typer.Exit(1)
