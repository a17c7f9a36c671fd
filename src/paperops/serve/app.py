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
import uuid
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paperops import __version__
from paperops.data.text import model_text
from paperops.serve import schemas as S
from paperops.serve.batching import BatcherClosed, BatchResult, MicroBatcher, QueueFull
from paperops.serve.metrics import START_KEY, HttpMetricsMiddleware, ServeMetrics
from paperops.serve.runtime import ModelInfo, PaperPrediction, Predictor
from paperops.serve.settings import ServeSettings

log = logging.getLogger(__name__)

Loader = Callable[[dict[str, Any] | None], Predictor]
STATIC_DIR = Path(__file__).parent / "static"
INFERENCE_PATHS = frozenset({"/v1/classify", "/predict"})
ANNOUNCED_KEY = "paperops.announced"  # scope key: this request was announced to the batcher
WARMUP_TEXT = "Warm-up\nOne call before serving, so the first user does not pay for lazy init."


# --- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """A deliberate non-2xx answer with the standard error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        loc: Sequence[str | int] = (),
        type_: str = "error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = [{"loc": list(loc), "msg": message, "type": type_}]
        self.headers = headers


def error_response(
    status: int,
    detail: list[dict[str, Any]],
    summary: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The one error body of the API: `{"error": summary, "detail": [{loc, msg, type}]}`."""
    if summary is None:
        parts = []
        for item in detail[:3]:
            loc = [x for x in item["loc"] if x != "body"]
            # a field path ("papers.0.title"), not a bare character position of a JSON error
            where = ".".join(str(x) for x in loc) if any(isinstance(x, str) for x in loc) else ""
            parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        summary = "; ".join(parts) + (f" (+{len(detail) - 3} more)" if len(detail) > 3 else "")
    return JSONResponse({"error": summary, "detail": detail}, status_code=status, headers=headers)


def _clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors without `input` (it can be a whole abstract, or bytes) and `ctx`
    objects; a JSON syntax error gets its position and reason in words."""
    out = []
    for e in errors:
        loc = [x if isinstance(x, int | str) else str(x) for x in e.get("loc", ())]
        msg = str(e.get("msg", "invalid value"))
        ctx = e.get("ctx") or {}
        if e.get("type") == "json_invalid" and ctx.get("error"):
            msg = f"malformed JSON at character {loc[-1] if loc else '?'}: {ctx['error']}"
        out.append({"loc": loc, "msg": msg, "type": str(e.get("type", "value_error"))})
    return out


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_errors(exc.errors())
        content_type = request.headers.get("content-type")
        if (
            not _is_json(content_type)
            and request.method in ("POST", "PUT", "PATCH")
            and any(e["loc"] == ["body"] for e in errors)
        ):
            msg = "Content-Type must be application/json" + (
                f" (got {content_type!r})" if content_type else " (none was sent)"
            )
            return error_response(
                415, [{"loc": ["header", "content-type"], "msg": msg, "type": "content_type"}]
            )
        return error_response(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
            msg = f"the body is not valid UTF-8 (byte {cause.start}: {cause.reason})"
            return error_response(
                422, [{"loc": ["body", cause.start], "msg": msg, "type": "utf8_invalid"}]
            )
        if exc.status_code == 400 and isinstance(cause, RecursionError | ValueError):
            msg = f"the body could not be parsed as JSON ({type(cause).__name__}: {cause})"[:300]
            return error_response(422, [{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        kind = getattr(exc, "error_type", f"http_{exc.status_code}")
        return error_response(
            exc.status_code,
            [{"loc": list(getattr(exc, "loc", [])), "msg": detail, "type": kind}],
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not bad input: the standard body (uvicorn still logs the traceback)."""
        msg = f"internal error ({type(exc).__name__}); see the server log"
        return error_response(500, [{"loc": [], "msg": msg, "type": "internal_error"}])


# --- pure ASGI middlewares -------------------------------------------------------------------


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once a body passes the limit; FastAPI re-raises HTTPExceptions
    from body reading, so it reaches the error handler as a 413 with the standard body."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than {limit} bytes (serve.limits.max_body_bytes)",
        )
        self.error_type = "body_too_large"
        self.loc = ["body"]


class BodyTimeout(StarletteHTTPException):
    """Raised from `receive` when the body has not fully arrived `timeout_s` after the request
    started (a slow or stalled client); 408, and the connection is closed after the answer."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout_s:g} s "
            "(serve.limits.body_timeout_s); send it faster or in one piece",
            headers={"Connection": "close"},
        )
        self.error_type = "body_timeout"
        self.loc = ["body"]


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes: at once from Content-Length, and while streaming for
    chunked bodies (or a Content-Length that lies), before the body is ever held whole.

    408 when the whole body has not arrived `timeout_s` after the request started: uvicorn has
    no body-read timeout (`timeout_keep_alive` only covers idle connections), so without it a
    client trickling a body byte by byte (slowloris) holds its connection, its task and the
    batcher's arrival count forever. The deadline is for the whole body, not per chunk, so
    trickling cannot extend it; reads after the body (disconnect checks) are not limited."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    exc = BodyTooLarge(self.limit)
                    response = error_response(
                        413, [{"loc": ["body"], "msg": exc.detail, "type": exc.error_type}]
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0
        started = False
        body_done = self.timeout_s is None
        deadline = time.monotonic() + (self.timeout_s or 0.0)

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                message = await receive()
            else:
                try:  # asyncio.timeout: no extra task per receive (wait_for makes one)
                    async with asyncio.timeout(deadline - time.monotonic()):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(float(self.timeout_s or 0.0)) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
                body_done = body_done or not message.get("more_body", False)
            else:  # http.disconnect: nothing more will come
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside FastAPI's body reading
            if started:
                raise
            response = error_response(
                exc.status_code,
                [{"loc": ["body"], "msg": exc.detail, "type": exc.error_type}],
                headers=dict(exc.headers) if exc.headers else None,
            )
            await response(scope, receive, send)


class ArrivalsMiddleware:
    """Tells the batcher an inference request is on its way while its body is still being read,
    so it waits for a fuller batch only when that can pay off (see `MicroBatcher`)."""

    def __init__(self, app: ASGIApp, state: "ServeState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        batcher = self.state.batcher
        if (
            batcher is None
            or scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in INFERENCE_PATHS
        ):
            await self.app(scope, receive, send)
            return
        batcher.announce()
        scope[ANNOUNCED_KEY] = batcher
        try:
            await self.app(scope, receive, send)
        finally:
            if scope.pop(ANNOUNCED_KEY, None) is not None:
                batcher.withdraw()


# --- state -----------------------------------------------------------------------------------


class ServeState:
    """What one app holds: settings, metrics, the batcher (once a model is loaded) and the log."""

    def __init__(self, settings: ServeSettings, loader: Loader, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        self.schemas = S.make_schemas(settings.limits)
        self.batcher: MicroBatcher | None = None
        self.reqlog: Any | None = None  # paperops.serve.reqlog.RequestLog
        self.generator: Any | None = None  # paperops.serve.generate.GeneratorState
        self.loading = False
        self.load_error: str | None = None
        self.reload_lock = asyncio.Lock()
        self.started_at = time.time()
        metrics.bind_queue_depth(lambda: self.batcher.queue_depth if self.batcher else 0)

    @property
    def predictor(self) -> Predictor | None:
        return None if self.batcher is None else self.batcher.predictor

    def not_ready_reason(self) -> str | None:
        if self.batcher is None:
            if self.load_error:
                return f"the model failed to load: {self.load_error}"
            return "the model is still loading" if self.loading else "no model is loaded"
        if not self.batcher.running:
            return "the inference worker is not running (shutting down?)"
        return None

    def install(self, predictor: Predictor) -> None:
        """Start serving `predictor` (first load) or swap it in (reload)."""
        if self.batcher is None:
            b = self.settings.batching
            self.batcher = MicroBatcher(
                predictor,
                max_batch_size=b.max_batch_size,
                max_wait_ms=b.max_wait_ms,
                queue_size=b.queue_size,
                retry_after_s=b.retry_after_s,
                on_batch=self.metrics.observe_batch,
                on_reject=self.metrics.queue_rejected.inc,
            ).start()
        else:
            self.batcher.swap(predictor)
        self.load_error = None
        self.metrics.set_model(predictor.info)

    def load(self, spec: dict[str, Any] | None) -> Predictor:
        """Load and warm a predictor (runs in a worker thread, never on the event loop)."""
        return warm(self.loader(spec))

    async def infer(self, request: Request, texts: list[str], top_k: int) -> BatchResult:
        announced = request.scope.pop(ANNOUNCED_KEY, None) is not None
        batcher = self.batcher
        retry = {"Retry-After": str(self.settings.batching.retry_after_s)}
        if batcher is None:
            raise ApiError(
                503, self.not_ready_reason() or "not ready", type_="not_ready", headers=retry
            )
        try:
            return await batcher.submit(texts, top_k, announced=announced)
        except QueueFull as e:
            raise ApiError(
                503, str(e), type_="queue_full", headers={"Retry-After": str(e.retry_after_s)}
            ) from None
        except BatcherClosed as e:
            raise ApiError(503, str(e), type_="shutting_down", headers=retry) from None
        except Exception as e:
            log.exception("inference failed")
            raise ApiError(
                500,
                f"inference failed ({type(e).__name__}); see the server log",
                type_="inference_error",
            ) from None

    async def confirm_logged(self, seq: int | None) -> None:
        """With serve.request_log.durable, answer only once the record's rows are committed
        (or dropped and counted), so a crash cannot lose the log row of an answered request.
        The wait is bounded: past it the answer goes out and the row stays queued (counted)."""
        cfg = self.settings.request_log
        if self.reqlog is None or not cfg.durable or seq is None:
            return
        if await self.reqlog.wait_written(seq, cfg.durable_timeout_ms / 1000.0) is None:
            self.metrics.log_unconfirmed.inc()

    def log_request(
        self,
        request_id: str,
        route: str,
        start: float,
        info: ModelInfo,
        papers: Sequence[tuple[str, str]],
        predictions: Sequence[PaperPrediction],
    ) -> int | None:
        """Queue the request's log rows; the record's sequence number for `confirm_logged`."""
        if self.reqlog is None:
            return None
        from paperops.serve.reqlog import PaperLogRow, RequestRecord

        rows = [
            PaperLogRow(
                index=i,
                title=title,
                abstract=abstract,
                label=p.label,
                confidence=p.confidence,
                prediction_set=[s.label for s in p.prediction_set],
                top=[(s.label, s.probability) for s in p.top],
            )
            for i, ((title, abstract), p) in enumerate(zip(papers, predictions, strict=True))
        ]
        return self.reqlog.put(
            RequestRecord(
                request_id=request_id,
                ts=time.time(),
                route=route,
                status=200,
                latency_ms=(time.perf_counter() - start) * 1000.0,
                model_name=info.name,
                model_version=info.version,
                papers=rows,
            )
        )


def warm(predictor: Predictor) -> Predictor:
    """One call before serving: lazy initialisation (ONNX Runtime arenas, tokenizer caches) is
    paid here and not by the first user."""
    predictor.predict_texts([WARMUP_TEXT], 1)
    return predictor


class RequestIds:
    """uuid4 hex ids from one urandom call per 256 ids: os.urandom releases the GIL, and under
    load every release lets the inference thread in for up to a switch interval."""

    def __init__(self, chunk: int = 256) -> None:
        self._chunk = chunk
        self._buf = b""
        self._pos = 0

    def __call__(self) -> str:
        if self._pos >= len(self._buf):
            self._buf, self._pos = os.urandom(16 * self._chunk), 0
        raw = self._buf[self._pos : self._pos + 16]
        self._pos += 16
        return uuid.UUID(bytes=raw, version=4).hex


def _summary(info: ModelInfo) -> dict[str, str]:
    return {
        "name": info.name,
        "version": info.version,
        "family": info.family,
        "runtime": info.runtime,
    }


def _score(s: Any) -> dict[str, Any]:
    return {"label": s.label, "name": s.name, "probability": s.probability}


def _request_start(request: Request) -> float:
    return float(request.scope.get(START_KEY) or time.perf_counter())


# --- the factory -----------------------------------------------------------------------------


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
    from paperops.serve.generate import (
        GeneratorInfoOut,
        GeneratorState,
        make_generation_router,
    )
    from paperops.serve.monitoring import DriftView, make_monitoring_router

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
        from paperops.serve.reqlog import FeedbackRecord

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


async def _start_request_log(state: ServeState) -> None:
    cfg = state.settings.request_log
    if not cfg.enabled:
        log.warning("request log disabled (serve.request_log.url is empty): nothing is logged")
        return
    from paperops.serve.reqlog import RequestLog

    reqlog = RequestLog(
        str(cfg.url),
        queue_size=cfg.queue_size,
        batch_size=cfg.batch_size,
        store_text=cfg.store_text,
        on_drop=state.metrics.log_dropped.inc,
        on_write=state.metrics.log_written.inc,
    )
    await anyio.to_thread.run_sync(reqlog.start)
    state.reqlog = reqlog


async def _load_initial(state: ServeState) -> None:
    state.loading = True
    try:
        predictor = await anyio.to_thread.run_sync(state.load, None)
    except Exception as e:
        state.load_error = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        log.error("the model failed to load: %s", e)
        return
    finally:
        state.loading = False
    state.install(predictor)
    info = predictor.info
    log.info("ready: serving %s v%s (%s)", info.name, info.version, info.runtime)


# --- conveniences ----------------------------------------------------------------------------


def path_loader(model_dir: Path, *, runtime: str = "auto", threads: int | None = None) -> Loader:
    """A loader for a server started from a directory: `{"model": path}` loads another one,
    None reloads `model_dir`; registry refs need the CLI's loader (it knows the registry)."""
    from paperops.models.base import ModelLoadError
    from paperops.serve.runtime import load_predictor

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
