"""The latest drift report, as gauges on /metrics and as JSON at GET /v1/monitoring/drift.

`paperops monitor drift` stores its reports in the request log's database; the API re-reads the
newest at most every `serve.drift_refresh_s`, so every replica shows the same scores without
the drift job knowing where the replicas run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from fastapi import APIRouter

from paperops.requestlog.queries import latest_drift_report
from paperops.serve.errors import ApiError
from paperops.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)


class DriftView:
    """A cached read of the latest stored drift report."""

    def __init__(self, url: str | None, metrics: ServeMetrics, refresh_s: float) -> None:
        self.url = url
        self.metrics = metrics
        self.refresh_s = refresh_s
        self._report: dict[str, Any] | None = None
        self._read_at = -float("inf")
        self._warned = False

    async def latest(self) -> dict[str, Any] | None:
        """The newest report, re-read when the cached one is older than refresh_s. A failing
        read keeps the last good report (and says so once in the log)."""
        if self.url is None:
            return None
        now = time.monotonic()
        if now - self._read_at < self.refresh_s:
            return self._report
        self._read_at = now

        try:
            report = await anyio.to_thread.run_sync(latest_drift_report, self.url)
        except Exception as e:  # a database hiccup must not break /metrics
            if not self._warned:
                log.warning("cannot read drift reports from the request log: %s", e)
                self._warned = True
            return self._report
        self._warned = False
        if report is not None:
            self.metrics.set_drift(report)
        self._report = report
        return report


def make_monitoring_router(view: DriftView) -> APIRouter:
    router = APIRouter(tags=["monitoring"])

    @router.get("/v1/monitoring/drift")
    async def drift() -> dict[str, Any]:
        """The latest drift report of `paperops monitor drift` (scores, thresholds, verdicts
        per check, the window and the reference); 404 until one has run."""

        report = await view.latest()
        if report is None:
            raise ApiError(
                404,
                "no drift report yet: run `paperops monitor drift` against this API's "
                "request log (serve.request_log.url)",
                type_="no_drift_report",
            )
        return report

    return router
