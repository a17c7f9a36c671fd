"""Pages and probes: `/` (the web page), `/healthz`, `/readyz`, `/metrics`.

No `from __future__ import annotations` in the route modules: FastAPI must see real types.
"""

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from paperops.serve import schemas as S
from paperops.serve.errors import ApiError
from paperops.serve.routes.monitoring import DriftView
from paperops.serve.state import ServeState

log = logging.getLogger(__name__)


def make_probes_router(state: ServeState, drift: DriftView, static_dir: Path) -> APIRouter:
    settings, metrics = state.settings, state.metrics
    gen_state = state.generator
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        page = static_dir / "index.html"
        if not page.is_file():
            raise ApiError(404, "the web page is not installed (paperops/serve/static)")
        return FileResponse(page, media_type="text/html")

    @router.get("/healthz", response_model=S.StatusResponse, tags=["probes"])
    async def healthz() -> dict[str, Any]:
        """Liveness: 200 while the process runs, even before a model is loaded."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=S.StatusResponse,
        responses={503: {"model": S.StatusResponse, "description": "Not ready, and why."}},
        tags=["probes"],
    )
    async def readyz() -> Response:
        """Readiness: 200 once a model is loaded and the inference worker runs (and the
        language model too when serve.generator.enabled is true)."""
        reason = state.not_ready_reason()
        if reason is None and settings.generator.required:
            gen_reason = gen_state.not_ready_reason()
            if gen_reason is not None:
                reason = f"the language model is not ready: {gen_reason}"
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        info = state.predictor.info  # type: ignore[union-attr]
        return JSONResponse({"status": "ready", "reason": f"serving {info.name} v{info.version}"})

    @router.get("/metrics", tags=["probes"], response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus exposition of this app's registry."""
        await drift.latest()  # the drift gauges follow the newest stored report
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return router
