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

The language-model endpoints (`/v1/generate`, `/infer`, `paperops.serve.routes.generate`) are always
routed; they answer 503 with the reason while no language model is loaded (`generator=` or
`generator_loader=`; `app.state.generator` holds it). Extra routers can be added with
`create_app(..., routers=[...])`; they reach this app's state as `request.app.state.serve`.

No `from __future__ import annotations` here: the endpoints are closures over request models
built at app-creation time, and FastAPI must see their real types.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from paperops import __version__
from paperops.inference.predictor import Predictor, load_predictor
from paperops.models.base import ModelLoadError
from paperops.serve.errors import _install_error_handlers
from paperops.serve.generator_state import GeneratorState
from paperops.serve.metrics import HttpMetricsMiddleware, ServeMetrics
from paperops.serve.middleware import ArrivalsMiddleware, BodyLimitMiddleware
from paperops.serve.routes.admin import make_admin_router
from paperops.serve.routes.classify import make_classify_router
from paperops.serve.routes.generate import make_generation_router
from paperops.serve.routes.monitoring import DriftView, make_monitoring_router
from paperops.serve.routes.probes import make_probes_router
from paperops.serve.settings import ServeSettings
from paperops.serve.state import (
    Loader,
    ServeState,
    load_initial,
    start_request_log,
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
    limits = settings.limits

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
        lifespan=lambda app: _lifespan(state, predictor),
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

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(make_probes_router(state, drift, STATIC_DIR))
    app.include_router(make_classify_router(state))
    app.include_router(make_admin_router(state))
    app.include_router(make_generation_router(settings.generator))
    app.include_router(make_monitoring_router(drift))
    for router in routers:
        app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(state: ServeState, predictor: Predictor | None) -> Any:
    """Start the request log, the language model and the classifier (or its background load);
    on shutdown answer what was accepted, then flush the log."""
    settings, gen_state = state.settings, state.generator
    await start_request_log(state)
    await gen_state.start()
    load_task: asyncio.Task[None] | None = None
    if predictor is not None:
        state.install(predictor)
    else:
        load_task = asyncio.create_task(load_initial(state))
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


def path_loader(model_dir: Path, *, runtime: str = "auto", threads: int | None = None) -> Loader:
    """A loader for a server started from a directory: `{"model": path}` loads another one,
    None reloads `model_dir`; registry refs need the CLI's loader (it knows the registry)."""

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
