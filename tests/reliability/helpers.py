"""Shared helpers for the reliability tests: servers that may never become ready, metric reads.

Everything runs `paperops serve` as a real child process on 127.0.0.1 (see
tests/integration/serve_helpers.py); these add what the fault tests need on top.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.integration.gen_helpers import metric_value
from tests.integration.serve_helpers import serve_cli

__all__ = ["metric_value", "serve_unready", "server_errors", "wait_for"]


@contextlib.contextmanager
def serve_unready(
    base: Path, *args: str, env: dict[str, str] | None = None, ready_timeout: float = 120.0
) -> Iterator[str]:
    """`paperops serve --wait-ready ARGS <test overrides>`; yields the base URL as soon as
    /healthz answers (not /readyz: the point is a server that may never become ready).
    Output goes to `base/server.log`; stopped with SIGTERM on exit."""
    with serve_cli(
        base, "--wait-ready", *args, env=env, ready_timeout=ready_timeout, ready_path="/healthz"
    ) as url:
        yield url


def wait_for(check: Callable[[], bool], *, timeout: float = 30.0, every: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def server_errors(text: str) -> float:
    """Sum of paperops_http_requests_total samples with a 5xx status."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "paperops_http_requests_total" and s.labels.get("status", "")[:1] == "5":
                total += s.value
    return total
