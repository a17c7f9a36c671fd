"""Prometheus metrics of one app, on the app's own registry.

No global registry: two apps in one process (tests, a benchmark next to a baseline) each count
their own traffic and never clash on metric names. HTTP metrics are recorded by a pure ASGI
middleware (no BaseHTTPMiddleware: it costs a task and a copy per request), labelled by the
route *template* (`/v1/classify`, `/static`), never the raw path, so a scanner probing random
URLs cannot blow up the number of series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paperops.inference.predictor import ModelInfo, PaperPrediction

UNMATCHED = "<unmatched>"
START_KEY = "paperops.start"  # scope key: perf_counter() when the request arrived
# 1 ms .. 10 s: an API answer on this hardware is a few ms (tfidf) to ~1 s (a big encoder batch)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.0005, *HTTP_BUCKETS)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LENGTH_BUCKETS = (100, 250, 500, 1000, 1500, 2000, 3000, 4000, 6500)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
SET_SIZE_BUCKETS = (0, 1, 2, 3, 4, 5)  # +Inf holds 5+
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
GEN_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
FINISH_REASONS = ("eos", "length", "context", "time_budget", "cancelled", "error")
# a client can send any method token: anything else is counted as OTHER (bounded label values)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServeMetrics:
    """Every metric the API exposes (see DESIGN.md, Monitoring), on one CollectorRegistry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "paperops_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "paperops_http_request_duration_seconds",
            "Time from the first byte of a request to the last byte of its response.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "paperops_http_requests_in_flight", "HTTP requests being handled now.", registry=r
        )
        self.inference_duration = Histogram(
            "paperops_inference_duration_seconds",
            "Time one micro-batch spends in the runtime (scores + calibration).",
            ["runtime"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "paperops_batch_size", "Papers per inference call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "paperops_queue_depth", "Papers waiting for the inference worker.", registry=r
        )
        self.queue_rejected = Counter(
            "paperops_queue_rejected",
            "Requests refused with 503 because the inference queue was full.",
            registry=r,
        )
        self.input_length = Histogram(
            "paperops_input_length_chars",
            "Characters of title + abstract per classified paper.",
            buckets=LENGTH_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "paperops_predictions", "Classified papers by predicted label.", ["label"], registry=r
        )
        self.confidence = Histogram(
            "paperops_prediction_confidence",
            "Calibrated probability of the top label.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.set_size = Histogram(
            "paperops_prediction_set_size",
            "Labels in the conformal prediction set (0 = no label confident enough).",
            buckets=SET_SIZE_BUCKETS,
            registry=r,
        )
        self.model_info = Info(
            "paperops_model", "The model being served (changes on reload).", registry=r
        )
        self.ready = Gauge(
            "paperops_ready",
            "1 while /readyz answers 200 (a classifier is loaded and serving), else 0.",
            registry=r,
        )
        self.reloads = Counter(
            "paperops_model_reloads", "Model reloads by result (ok, error).", ["result"], registry=r
        )
        self.log_written = Counter(
            "paperops_request_log_written", "Rows written to the request log.", registry=r
        )
        self.log_dropped = Counter(
            "paperops_request_log_dropped",
            "Request-log rows dropped because the writer's queue was full (or it failed).",
            registry=r,
        )
        self.log_unconfirmed = Counter(
            "paperops_request_log_unconfirmed",
            "Answers sent before their request-log rows were committed: the durable wait "
            "(serve.request_log.durable_timeout_ms) ran out; the rows stay queued.",
            registry=r,
        )
        self.feedback = Counter(
            "paperops_feedback", "True labels received through /v1/feedback.", registry=r
        )
        # --- generation (the language model) ---
        self.gen_tokens = Counter(
            "paperops_generation_tokens", "Tokens generated by the language model.", registry=r
        )
        self.gen_ttft = Histogram(
            "paperops_generation_time_to_first_token_seconds",
            "Time from accepting a generation request to its first new token (queue included).",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.gen_tokens_per_s = Histogram(
            "paperops_generation_tokens_per_second",
            "Generated tokens / total time, per request.",
            buckets=TOKENS_PER_S_BUCKETS,
            registry=r,
        )
        self.gen_active = Gauge(
            "paperops_generation_active_sequences",
            "Sequences being decoded now (the running batch).",
            registry=r,
        )
        self.gen_queue_depth = Gauge(
            "paperops_generation_queue_depth",
            "Generation requests waiting for a batch slot.",
            registry=r,
        )
        self.gen_batch_size = Histogram(
            "paperops_generation_batch_size",
            "Sequences per decode step (prefills included).",
            buckets=GEN_BATCH_BUCKETS,
            registry=r,
        )
        self.gen_step_duration = Histogram(
            "paperops_generation_step_duration_seconds",
            "Time of one batched forward step of the decoder.",
            ["runtime"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.gen_rejected = Counter(
            "paperops_generation_queue_rejected",
            "Generation requests refused with 503 because the generation queue was full.",
            registry=r,
        )
        self.gen_finished = Counter(
            "paperops_generation_finished",
            "Finished generation requests by finish reason.",
            ["finish_reason"],
            registry=r,
        )
        self.generator_info = Info(
            "paperops_generator", "The language model being served (family lm).", registry=r
        )
        # --- drift (the latest `paperops monitor drift` report; see paperops.monitor) ---
        self.drift_score = Gauge(
            "paperops_drift_score",
            "Score of each drift check in the latest drift report (higher = more drift).",
            ["check"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            "paperops_drift_threshold",
            "Threshold above which a drift check counts as drifted.",
            ["check"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "paperops_drift_detected",
            "1 if the check drifted in the latest drift report, else 0.",
            ["check"],
            registry=r,
        )
        self.drift_window_papers = Gauge(
            "paperops_drift_window_papers",
            "Logged papers the latest drift report compared with the training reference.",
            registry=r,
        )
        self.drift_report_timestamp = Gauge(
            "paperops_drift_report_timestamp_seconds",
            "Unix time the latest drift report was computed (0 = none yet).",
            registry=r,
        )
        for reason in FINISH_REASONS:
            self.gen_finished.labels(finish_reason=reason)
        for result in ("ok", "error"):
            self.reloads.labels(result=result)
        self._label_children: dict[str, Any] = {}  # predictions{label}: skip labels() per paper
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    # --- updates ---------------------------------------------------------------------------

    def set_model(self, info: ModelInfo) -> None:
        self.model_info.info(
            {
                "name": info.name,
                "version": info.version,
                "family": info.family,
                "runtime": info.runtime,
            }
        )

    def set_generator(self, info: dict[str, Any]) -> None:
        self.generator_info.info(
            {k: str(info.get(k, "")) for k in ("name", "version", "family", "runtime")}
        )

    def bind_generation(self, active: Callable[[], float], queued: Callable[[], float]) -> None:
        """Read the generation engine's batch and queue at scrape time."""
        self.gen_active.set_function(active)
        self.gen_queue_depth.set_function(queued)

    def observe_generation_step(self, size: int, tokens: int, seconds: float, runtime: str) -> None:
        self.gen_batch_size.observe(size)
        self.gen_tokens.inc(tokens)
        self.gen_step_duration.labels(runtime=runtime).observe(seconds)

    def observe_generation(
        self, finish_reason: str, ttft_s: float | None, tokens_per_s: float | None
    ) -> None:
        self.gen_finished.labels(finish_reason=finish_reason).inc()
        if ttft_s is not None:
            self.gen_ttft.observe(ttft_s)
        if tokens_per_s is not None:
            self.gen_tokens_per_s.observe(tokens_per_s)

    def set_drift(self, report: dict[str, Any] | None) -> None:
        """Publish a drift report's scores (see paperops.monitor.drift for its shape); checks
        missing from a newer report disappear instead of keeping stale values."""
        for gauge in (self.drift_score, self.drift_threshold, self.drift_detected):
            gauge.clear()
        if not report:
            return
        for name, check in report.get("checks", {}).items():
            if check.get("score") is None:  # skipped (e.g. no feedback for live accuracy)
                continue
            self.drift_score.labels(check=name).set(float(check["score"]))
            self.drift_threshold.labels(check=name).set(float(check["threshold"]))
            self.drift_detected.labels(check=name).set(1.0 if check.get("drifted") else 0.0)
        self.drift_window_papers.set(float(report.get("window", {}).get("papers", 0)))
        self.drift_report_timestamp.set(float(report.get("ts", 0.0)))

    def bind_ready(self, ready: Callable[[], bool]) -> None:
        """Readiness read at scrape time, so an alert sees what /readyz would answer."""
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)

    def bind_queue_depth(self, depth: Callable[[], float]) -> None:
        """Read the batcher's queue at scrape time (no per-request gauge updates)."""
        self.queue_depth.set_function(depth)

    def observe_batch(self, size: int, seconds: float, runtime: str) -> None:
        self.batch_size.observe(size)
        self.inference_duration.labels(runtime=runtime).observe(seconds)

    def observe_papers(
        self, lengths: Iterable[int], predictions: Sequence[PaperPrediction]
    ) -> None:
        for n in lengths:
            self.input_length.observe(n)
        children = self._label_children
        for p in predictions:
            child = children.get(p.label)
            if child is None:
                child = children[p.label] = self.predictions.labels(label=p.label)
            child.inc()
            self.confidence.observe(p.confidence)
            self.set_size.observe(len(p.prediction_set))

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _flat(routes: Sequence[Any]) -> Iterator[Any]:
    """The app's routes with included routers opened: FastAPI 0.16x keeps an included router as
    one lazy `_IncludedRouter` entry instead of copying its routes, and that entry has no path.
    The app includes its routers without a prefix, so their declared paths are the real ones."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if inner is not None and not getattr(context, "prefix", ""):
            yield from _flat(inner.routes)
        else:
            yield route


def route_template(
    scope: Scope, routes: Callable[[], Sequence[Any]], probe: Scope | None = None
) -> str:
    """The matched route's path template. Matched again on `probe` (the request as it arrived:
    routing rewrites root_path for mounts) when the router recorded no route: a mount such as
    /static, or a 413 from the body-limit middleware before routing. `<unmatched>` for a 404."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    probe = probe if probe is not None else scope
    for candidate in _flat(routes()):
        try:
            match, _ = candidate.matches(probe)
        except (KeyError, TypeError, ValueError):  # a route that cannot judge this scope
            continue
        if match == Match.FULL:
            return str(getattr(candidate, "path", UNMATCHED))
    return UNMATCHED


class HttpMetricsMiddleware:
    """Counts, times and tracks in-flight HTTP requests; a pure ASGI middleware."""

    def __init__(
        self, app: ASGIApp, metrics: ServeMetrics, routes: Callable[[], Sequence[Any]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before responding
        start = time.perf_counter()
        scope[START_KEY] = start
        method = scope.get("method", "GET")
        path, root_path = scope.get("path", ""), scope.get("root_path", "")

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_flight.dec()
            probe = {"type": "http", "path": path, "root_path": root_path, "method": method}
            route = route_template(scope, self.routes, probe)
            method = method if method in METHODS else "OTHER"
            m.http_requests.labels(route=route, method=method, status=str(status)).inc()
            m.http_duration.labels(route=route, method=method).observe(time.perf_counter() - start)
