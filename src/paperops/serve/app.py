"""The API: a FastAPI app factory around a `Predictor`, a `MicroBatcher` and a `RequestLog`.

`create_app(settings, loader)` builds one app with its own metrics registry and request models
(limits from the settings); the lifespan starts the batcher and the request log and, on
shutdown, answers what was accepted and flushes the log. `loader(spec)` loads a predictor:
`spec` None means "what the server was started with" (e.g. the registry champion), else
`{"model": path}` or `{"ref": "champion" | "<version>"}` from `/v1/admin/reload`.

Inference never runs on the event loop (the batcher's worker thread does it) and nothing a
client sends can produce a 500: malformed JSON, invalid UTF-8, wrong types, extra fields, blank
or over-long text, too many papers, a wrong content type and an oversized body (413, enforced on
the bytes as they stream in, not only on Content-Length) all get a 4xx whose body names the field
and the rule: `{"error": "<one line>", "detail": [{"loc": [...], "msg": "...", "type": "..."}]}`.

The language-model endpoints (`/v1/generate`, `/infer`, `paperops.serve.generate`) are always
routed; they answer 503 with the reason while no language model is loaded (`generator=` or
`generator_loader=`; `app.state.generator` holds it). Extra routers can be added with
`create_app(..., routers=[...])`; they reach this app's state as `request.app.state.serve`.

No `from __future__ import annotations` here: the endpoints are closures over request models
built at app-creation time, and FastAPI must see their real types.
"""

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from paperops import __version__
from paperops.data.text import model_text
from paperops.inference.predictor import Predictor
from paperops.serve import schemas as S
from paperops.serve.errors import ApiError, _install_error_handlers
from paperops.serve.metrics import HttpMetricsMiddleware, ServeMetrics
from paperops.serve.middleware import ArrivalsMiddleware, BodyLimitMiddleware
from paperops.serve.settings import ServeSettings
from paperops.serve.state import (
    Loader,
    RequestIds,
    ServeState,
    _load_initial,
    _request_start,
    _score,
    _start_request_log,
    _summary,
    warm,
)

log = logging.getLogger(__name__)


STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    settings: ServeSettings,
    loader: Loader,
    *,
    predictor: Predictor | None = None,
    routers: Sequence[APIRouter] = (),
    metrics: ServeMetrics | None = None,
    generator: Any | None = None,
    generator_loader: Callable[[], Any] | None = None,
    generator_error: str | None = None,
) -> FastAPI:
    """The API for `settings`. With `predictor`, it is ready as soon as it starts; without,
    the lifespan loads `loader(None)` in the background while /healthz already answers and
    /readyz says why it is not ready yet.

    The language model likewise: `generator` (a `LoadedGenerator`) serves at once,
    `generator_loader()` loads in the background, `generator_error` says why there is none."""
    from paperops.serve.generator_state import GeneratorState
    from paperops.serve.routes.generate import make_generation_router
    from paperops.serve.routes.monitoring import DriftView, make_monitoring_router
    from paperops.serve.schemas_generate import GeneratorInfoOut

    metrics = metrics or ServeMetrics()
    state = ServeState(settings, loader, metrics)
    drift = DriftView(settings.request_log.url, metrics, settings.drift_refresh_s)
    metrics.bind_ready(lambda: state.not_ready_reason() is None)
    gen_state = GeneratorState(
        settings.generator,
        metrics,
        loader=generator_loader,
        generator=generator,
        error=generator_error,
        reqlog=lambda: state.reqlog,
        confirm_logged=state.confirm_logged,
    )
    state.generator = gen_state
    schemas = state.schemas
    limits = settings.limits
    new_request_id = RequestIds()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await _start_request_log(state)
        await gen_state.start()
        load_task: asyncio.Task[None] | None = None
        if predictor is not None:
            state.install(predictor)
        else:
            load_task = asyncio.create_task(_load_initial(state))
        try:
            yield
        finally:
            if load_task is not None and not load_task.done():
                load_task.cancel()
            timeout = settings.shutdown_timeout_s
            if state.batcher is not None:
                drained = await anyio.to_thread.run_sync(state.batcher.close, timeout)
                if not drained:
                    log.error("the inference worker did not finish within %.1f s", timeout)
            await gen_state.close(timeout)
            if state.reqlog is not None:
                await anyio.to_thread.run_sync(state.reqlog.close, timeout)
                log.info(
                    "request log closed: %d rows written, %d dropped",
                    state.reqlog.written,
                    state.reqlog.dropped,
                )

    app = FastAPI(
        title="paperops",
        version=__version__,
        summary="Classify scientific papers into arXiv categories with calibrated confidence.",
        description=(
            "Send a title and abstract; get the top arXiv categories with calibrated "
            "probabilities and a conformal prediction set. Limits: "
            f"{limits.max_papers} papers per request, titles up to {limits.title_max_chars} "
            f"and abstracts up to {limits.abstract_max_chars} characters, bodies up to "
            f"{limits.max_body_bytes} bytes. Errors always have the shape "
            "`{error, detail: [{loc, msg, type}]}`."
        ),
        lifespan=lifespan,
    )
    app.state.serve = state
    app.state.generator = gen_state
    _install_error_handlers(app)

    # innermost first: arrivals -> body limit -> CORS -> metrics (outermost)
    app.add_middleware(ArrivalsMiddleware, state=state)
    app.add_middleware(
        BodyLimitMiddleware, limit=limits.max_body_bytes, timeout_s=limits.body_timeout_s
    )
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics, routes=lambda: app.routes)

    errors_4xx: dict[int | str, dict[str, Any]] = {
        422: {"model": S.ErrorResponse, "description": "Invalid input: field and rule in detail."},
        413: {"model": S.ErrorResponse, "description": "Body over serve.limits.max_body_bytes."},
        415: {"model": S.ErrorResponse, "description": "Content-Type is not application/json."},
        408: {
            "model": S.ErrorResponse,
            "description": "Body not received within serve.limits.body_timeout_s.",
        },
    }
    busy: dict[int | str, dict[str, Any]] = {
        503: {
            "model": S.ErrorResponse,
            "description": "Not ready, shutting down, or the queue is full (see Retry-After).",
        }
    }
    ClassifyRequest = schemas.ClassifyRequest
    PredictRequest = schemas.PredictRequest
    FeedbackRequest = schemas.FeedbackRequest

    # --- pages and probes ---

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise ApiError(404, "the web page is not installed (paperops/serve/static)")
        return FileResponse(page, media_type="text/html")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", response_model=S.StatusResponse, tags=["probes"])
    async def healthz() -> dict[str, Any]:
        """Liveness: 200 while the process runs, even before a model is loaded."""
        return {"status": "ok"}

    @app.get(
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

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus exposition of this app's registry."""
        await drift.latest()  # the drift gauges follow the newest stored report
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # --- the model ---

    class ModelResponse(S.ModelResponse):
        generator: GeneratorInfoOut | None = None

    @app.get("/v1/model", response_model=ModelResponse, responses=busy, tags=["classification"])
    async def model_info() -> dict[str, Any]:
        """What is being served, the input limits and the batching settings."""
        p = state.predictor
        if p is None:
            raise ApiError(503, state.not_ready_reason() or "not ready", type_="not_ready")
        b = settings.batching
        return {
            "model": p.info.to_dict(),
            "labels": [{"label": lab, "name": n} for lab, n in zip(p.labels, p.names, strict=True)],
            "limits": {
                "max_papers": limits.max_papers,
                "title_max_chars": limits.title_max_chars,
                "abstract_max_chars": limits.abstract_max_chars,
                "id_max_chars": limits.id_max_chars,
                "max_top_k": limits.max_top_k,
                "default_top_k": limits.default_top_k,
                "max_body_bytes": limits.max_body_bytes,
            },
            "batching": {
                "max_batch_size": b.max_batch_size,
                "max_wait_ms": b.max_wait_ms,
                "queue_size": b.queue_size,
                "retry_after_s": b.retry_after_s,
            },
            "generator": gen_state.info(),
        }

    # --- classification ---

    @app.post(
        "/v1/classify",
        response_model=S.ClassifyResponse,
        responses={**errors_4xx, **busy},
        tags=["classification"],
    )
    async def classify(body: ClassifyRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Classify 1..max_papers papers: top categories with calibrated probabilities and a
        conformal prediction set per paper, answered in input order."""
        start = _request_start(request)
        papers = [(p.title, p.abstract) for p in body.papers]  # type: ignore[attr-defined]
        texts = [model_text(t, a) for t, a in papers]
        result = await state.infer(request, texts, body.top_k)  # type: ignore[attr-defined]
        info = result.info
        request_id = new_request_id()
        results = [
            {
                "id": paper.id,
                "label": p.label,
                "name": p.name,
                "confidence": p.confidence,
                "top": [_score(s) for s in p.top],
                "prediction_set": [_score(s) for s in p.prediction_set],
            }
            for paper, p in zip(body.papers, result.predictions, strict=True)  # type: ignore[attr-defined]
        ]
        metrics.observe_papers((len(t) + len(a) for t, a in papers), result.predictions)
        seq = state.log_request(request_id, "/v1/classify", start, info, papers, result.predictions)
        await state.confirm_logged(seq)
        return JSONResponse(
            {
                "request_id": request_id,
                "model": _summary(info),
                "coverage_target": info.coverage_target,
                "results": results,
            },
            headers={"X-Request-ID": request_id},
        )

    @app.post(
        "/predict",
        response_model=S.PredictResponse,
        responses={**errors_4xx, **busy},
        tags=["classification"],
    )
    async def predict(body: PredictRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """One paper, in the first report's shape; the request id is in X-Request-ID."""
        start = _request_start(request)
        paper = (body.title, body.abstract)  # type: ignore[attr-defined]
        result = await state.infer(request, [model_text(*paper)], limits.default_top_k)
        p = result.predictions[0]
        request_id = new_request_id()
        metrics.observe_papers([len(paper[0]) + len(paper[1])], result.predictions)
        seq = state.log_request(
            request_id, "/predict", start, result.info, [paper], result.predictions
        )
        await state.confirm_logged(seq)
        return JSONResponse(
            {
                "top_category": p.label,
                "predictions": [{"category": s.label, "confidence": s.probability} for s in p.top],
            },
            headers={"X-Request-ID": request_id},
        )

    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=S.FeedbackAccepted,
        responses={
            404: {"model": S.ErrorResponse, "description": "No such request id."},
            **errors_4xx,
            **busy,
        },
        tags=["classification"],
    )
    async def feedback(body: FeedbackRequest) -> Response:  # type: ignore[valid-type]
        """Report the true label of a paper you classified (by request id and index)."""
        from paperops.requestlog.schema import FeedbackRecord

        reqlog = state.reqlog
        if reqlog is None:
            raise ApiError(
                503,
                "the request log is disabled (serve.request_log.url), so feedback cannot be stored",
                type_="feedback_disabled",
            )
        p = state.predictor
        if p is None:
            raise ApiError(503, state.not_ready_reason() or "not ready", type_="not_ready")
        label = body.label  # type: ignore[attr-defined]
        if label not in p.labels:
            known = ", ".join(p.labels)
            raise ApiError(
                422,
                f"label {label!r} is not one of the model's labels: {known}",
                loc=["body", "label"],
                type_="unknown_label",
            )
        request_id = body.request_id  # type: ignore[attr-defined]
        if not await anyio.to_thread.run_sync(reqlog.has_request, request_id):
            raise ApiError(
                404,
                f"no request {request_id} in the request log (was it served by this API?)",
                loc=["body", "request_id"],
                type_="unknown_request",
            )
        index = body.index  # type: ignore[attr-defined]
        seq = reqlog.put(FeedbackRecord(request_id, index, label, time.time()))
        if seq is None:
            raise ApiError(
                503,
                "the request log is full right now; retry later",
                type_="log_full",
                headers={"Retry-After": str(settings.batching.retry_after_s)},
            )
        await state.confirm_logged(seq)
        metrics.feedback.inc()
        return JSONResponse(
            {"status": "accepted", "request_id": request_id, "index": index, "label": label},
            status_code=202,
        )

    # --- admin ---

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

    @app.post(
        "/v1/admin/reload",
        response_model=S.ReloadResponse,
        responses={
            401: {"model": S.ErrorResponse, "description": "No bearer token."},
            403: {"model": S.ErrorResponse, "description": "Wrong token, or admin disabled."},
            409: {"model": S.ErrorResponse, "description": "The new model failed to load."},
            **errors_4xx,
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
        previous = _summary(old.info) if old else _summary(new.info)
        return {"previous": previous, "current": _summary(new.info), "seconds": round(seconds, 3)}

    # --- benchmark ceiling ---

    if settings.benchmark_endpoints:

        @app.post("/v1/noop", include_in_schema=False)
        async def noop(body: ClassifyRequest) -> Response:  # type: ignore[valid-type]
            """Validates like /v1/classify and answers at once: the HTTP ceiling."""
            return JSONResponse({"papers": len(body.papers)})  # type: ignore[attr-defined]

    app.include_router(make_generation_router(settings.generator))
    app.include_router(make_monitoring_router(drift))
    for router in routers:
        app.include_router(router)
    return app


def path_loader(model_dir: Path, *, runtime: str = "auto", threads: int | None = None) -> Loader:
    """A loader for a server started from a directory: `{"model": path}` loads another one,
    None reloads `model_dir`; registry refs need the CLI's loader (it knows the registry)."""
    from paperops.inference.predictor import load_predictor
    from paperops.models.base import ModelLoadError

    def load(spec: dict[str, Any] | None) -> Predictor:
        spec = spec or {}
        if "ref" in spec:
            raise ModelLoadError(
                "this server was started from a directory, not the registry: reload with "
                '{"model": "<path>"}'
            )
        return load_predictor(
            Path(spec.get("model") or model_dir), runtime=runtime, threads=threads
        )

    return load


def app_for_model(
    model_dir: Path,
    settings: ServeSettings | None = None,
    *,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """A ready-to-serve app for one bundle or export directory (tests, benchmarks): loads the
    predictor now, so a bad directory fails here and not on the first request."""
    settings = settings or ServeSettings()
    loader = path_loader(Path(model_dir), runtime=settings.runtime, threads=settings.threads)
    return create_app(settings, loader, predictor=warm(loader(None)), routers=routers)
