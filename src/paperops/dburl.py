"""Database URLs as the request log and the shared sweeps use them: masked for messages, and the
connection settings every server database gets.

Both talk to PostgreSQL across machines, where a restart leaves dead pooled connections and a
vanished host would hang a connect for the OS's TCP timeout (hours): pooled connections are
tested before use, and libpq gets a bounded connect plus keepalives and a user timeout, so a lost
host fails a connection in ~30 s (measured live in tests/integration/*_postgres.py). The URL's own
query parameters win over these defaults.

Foundation: imports nothing from paperops.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, make_url

CONNECT_TIMEOUT_S = 5  # a server that does not answer fails a connect after this, not never
PG_DEFAULTS: dict[str, int] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: unacknowledged writes fail the connection after 30 s
}


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        parsed = make_url(url)
    except Exception:
        return "<unparseable URL>"
    if parsed.password is None:
        return str(url) if isinstance(url, str) else parsed.render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=True)


def server_engine_kwargs(url: URL) -> dict[str, Any]:
    """`create_engine` keyword arguments for `url`: none for SQLite (a local file), pre-ping
    for any server, plus the libpq defaults above for PostgreSQL."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        kwargs["connect_args"] = {k: v for k, v in PG_DEFAULTS.items() if k not in url.query}
    return kwargs
