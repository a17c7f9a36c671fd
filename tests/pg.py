"""A throwaway PostgreSQL cluster for the live tests: `initdb` + `pg_ctl` in a temp dir, on a free
loopback port, as an unprivileged user (initdb refuses root), torn down at the end.

Each test asks for its own database (`PgCluster.new_database`), so tests share one server per
xdist worker (startup ~1.5 s) but never each other's tables. Password auth over TCP (scram), so
wrong-credential errors are the real ones. fsync is off: the cluster lives for one test session and
a process crash (pg_ctl stop, kill -9 of a client) loses nothing without it; only an OS crash
would.

Missing binaries skip the tests with the reason, or fail them where PAPEROPS_REQUIRE_DATA=1 (CI):
`make sysdeps` installs Debian's `postgresql` when it is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

USER = "paperops"
PASSWORD = "pg-test-secret"  # a throwaway cluster on loopback


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> list[str]:
    """`runuser -u postgres --` when we are root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) for PostgreSQL")


class PgCluster:
    """One PostgreSQL server on 127.0.0.1:<port>, data in a temp dir."""

    def __init__(self) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise FileNotFoundError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: `make sysdeps` installs "
                "Debian's postgresql package"
            )
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.base = Path(tempfile.mkdtemp(prefix="paperops-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self._prefix = _as_user()
        if self._prefix:
            user = pwd.getpwnam(self._prefix[2])
            os.chown(self.base, user.pw_uid, user.pw_gid)
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._prefix:
            os.chown(pwfile, pwd.getpwnam(self._prefix[2]).pw_uid, -1)
        self._run(
            self.initdb,
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.base}'\nfsync = off\n"
                "full_page_writes = off\nmax_connections = 100\nshared_buffers = 32MB\n"
            )
        self.start()

    def _run(self, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run(  # fixed binaries and our own paths
            [*self._prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stdout}\n{proc.stderr}")

    def start(self) -> None:
        log = self.base / "server.log"
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` aborts open transactions and disconnects clients (a restart), `immediate` is a
        crash (recovery on the next start)."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def url(
        self, database: str = "postgres", *, password: str = PASSWORD, port: int | None = None
    ) -> str:
        return (
            f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"
            "?connect_timeout=5"
        )

    def plain_url(self, database: str = "postgres") -> str:
        """The same, as the `postgresql://` URL MLflow's server and libpq tools take."""
        return self.url(database).replace("postgresql+psycopg://", "postgresql://", 1)

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its name."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def start_cluster() -> PgCluster:
    """A running cluster, or skip (fail under PAPEROPS_REQUIRE_DATA=1) with the reason."""
    try:
        return PgCluster()
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        msg = f"no PostgreSQL for the live tests: {e}"
        if os.environ.get("PAPEROPS_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def wait_ready(cluster: PgCluster, timeout: float = 30) -> None:
    """Until the server accepts connections (after a start)."""
    import psycopg

    deadline = time.monotonic() + timeout
    dsn = f"host=127.0.0.1 port={cluster.port} user={USER} password={PASSWORD} dbname=postgres"
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def query(url: str, sql: str) -> list[tuple]:
    """Rows of `sql` on the database at `url`, read by a fresh connection (as another process)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()
