"""Admin: `/v1/admin/reload` behind a bearer token (hot swap; no request is dropped)."""

import hmac
import logging
import os
import time
from typing import Any

import anyio
from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from paperops.serve import schemas as S
from paperops.serve.errors import ApiError
from paperops.serve.state import ServeState, summary

log = logging.getLogger(__name__)


def make_admin_router(state: ServeState) -> APIRouter:
    settings, metrics = state.settings, state.metrics
    router = APIRouter()

    bearer = HTTPBearer(auto_error=False, description=f"The token in ${settings.admin_token_env}")

    def require_admin(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        token = os.environ.get(settings.admin_token_env, "")
        if not token:
            raise ApiError(
                403,
                f"admin endpoints are disabled: set {settings.admin_token_env} on the server "
                "to enable them",
                type_="admin_disabled",
            )
        if credentials is None:
            raise ApiError(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                loc=["header", "authorization"],
                type_="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise ApiError(
                403, "invalid admin token", loc=["header", "authorization"], type_="forbidden"
            )

    @router.post(
        "/v1/admin/reload",
        response_model=S.ReloadResponse,
        responses={
            401: {"model": S.ErrorResponse, "description": "No bearer token."},
            403: {"model": S.ErrorResponse, "description": "Wrong token, or admin disabled."},
            409: {"model": S.ErrorResponse, "description": "The new model failed to load."},
            **S.ERRORS_4XX,
        },
        dependencies=[Depends(require_admin)],
        tags=["admin"],
    )
    async def reload(body: S.ReloadRequest | None = None) -> dict[str, Any]:
        """Load a model (a path, a registry ref, or again what the server started with), warm
        it up and swap it in; requests in flight finish on the old model, none is dropped.
        A failed load keeps the old model serving."""
        spec = body.model_dump(exclude_none=True) if body is not None else None
        async with state.reload_lock:
            old = state.predictor
            t0 = time.perf_counter()
            try:
                new = await anyio.to_thread.run_sync(state.load, spec or None)
            except Exception as e:
                metrics.reloads.labels(result="error").inc()
                log.error("reload %s failed: %s", spec or "(startup source)", e)
                keeping = f"; still serving {old.info.name} v{old.info.version}" if old else ""
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ApiError(
                    409, f"reload failed: {reason}{keeping}", type_="reload_failed"
                ) from None
            state.install(new)
            metrics.reloads.labels(result="ok").inc()
            seconds = time.perf_counter() - t0
        log.info(
            "reloaded: %s -> %s v%s (%.1f s)",
            f"{old.info.name} v{old.info.version}" if old else "nothing",
            new.info.name,
            new.info.version,
            seconds,
        )
        previous = summary(old.info) if old else summary(new.info)
        return {"previous": previous, "current": summary(new.info), "seconds": round(seconds, 3)}

    return router
