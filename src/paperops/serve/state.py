"""`ServeState`: what one app holds (settings, metrics, the micro-batcher once a model is loaded,
the request log) and the steps shared by the routes: infer through the batcher, log a request,
wait for its durable commit. Also the lifespan's start/load helpers and request ids.
"""

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from fastapi import Request

from paperops.inference.predictor import ModelInfo, PaperPrediction, Predictor
from paperops.requestlog.schema import PaperLogRow, RequestRecord
from paperops.requestlog.writer import RequestLog
from paperops.serve import schemas as S
from paperops.serve.batching import BatcherClosed, BatchResult, MicroBatcher, QueueFull
from paperops.serve.errors import ApiError
from paperops.serve.explanations import Explanations
from paperops.serve.metrics import START_KEY, ServeMetrics
from paperops.serve.settings import ServeSettings

log = logging.getLogger(__name__)


Loader = Callable[[dict[str, Any] | None], Predictor]


INFERENCE_PATHS = frozenset({"/v1/classify", "/predict"})


ANNOUNCED_KEY = "paperops.announced"  # scope key: this request was announced to the batcher


WARMUP_TEXT = "Warm-up\nOne call before serving, so the first user does not pay for lazy init."


class ServeState:
    """What one app holds: settings, metrics, the batcher (once a model is loaded) and the log."""

    def __init__(self, settings: ServeSettings, loader: Loader, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        self.schemas = S.make_schemas(settings.limits, settings.explain)
        self.explanations = Explanations(settings.explain)
        self.batcher: MicroBatcher | None = None
        self.reqlog: Any | None = None  # paperops.requestlog.writer.RequestLog
        self.generator: Any | None = None  # paperops.serve.generator_state.GeneratorState
        self.loading = False
        self.load_error: str | None = None
        self.reload_lock = asyncio.Lock()
        self.started_at = time.time()
        self.new_request_id = RequestIds()
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

    async def infer(
        self, request: Request, texts: list[str], top_k: int, cross_lists: bool = False
    ) -> BatchResult:
        announced = request.scope.pop(ANNOUNCED_KEY, None) is not None
        batcher = self.batcher
        retry = {"Retry-After": str(self.settings.batching.retry_after_s)}
        if batcher is None:
            raise ApiError(
                503, self.not_ready_reason() or "not ready", type_="not_ready", headers=retry
            )
        try:
            return await batcher.submit(texts, top_k, announced=announced, cross_lists=cross_lists)
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
    """One call before serving: lazy initialisation (ONNX Runtime arenas, tokenizer caches, the
    cross-list head's weights) is paid here and not by the first user."""
    predictor.predict_texts([WARMUP_TEXT], 1, cross_lists=predictor.cross_lists is not None)
    return predictor


def check_cross_lists(predictor: Predictor | None) -> None:
    """422 naming the model when cross_lists=true cannot be served (no head)."""
    if predictor is not None and predictor.cross_lists is None:
        info = predictor.info
        raise ApiError(
            422,
            f"model {info.name} v{info.version} ({info.family}) has no cross-list head: it "
            "answers one label per paper. Send cross_lists=false, or serve a bundle trained "
            "with experiment=category (train.cross_lists.enabled=true)",
            loc=["body", "cross_lists"],
            type_="cross_lists_unsupported",
        )


def cross_lists_out(p: PaperPrediction) -> list[dict[str, Any]]:
    return [
        {"label": c.label, "name": c.name, "probability": c.probability, "archive": c.archive}
        for c in p.cross_lists or ()
    ]


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


def summary(info: ModelInfo) -> dict[str, str]:
    return {
        "name": info.name,
        "version": info.version,
        "family": info.family,
        "runtime": info.runtime,
    }


def score(s: Any) -> dict[str, Any]:
    return {"label": s.label, "name": s.name, "probability": s.probability}


def request_start(request: Request) -> float:
    return float(request.scope.get(START_KEY) or time.perf_counter())


async def start_request_log(state: ServeState) -> None:
    cfg = state.settings.request_log
    if not cfg.enabled:
        log.warning("request log disabled (serve.request_log.url is empty): nothing is logged")
        return

    reqlog = RequestLog(
        str(cfg.url),
        queue_size=cfg.queue_size,
        batch_size=cfg.batch_size,
        store_text=cfg.store_text,
        retry_s=cfg.retry_s,
        on_drop=state.metrics.log_dropped.inc,
        on_write=state.metrics.log_written.inc,
    )
    await anyio.to_thread.run_sync(reqlog.start)
    state.reqlog = reqlog


async def load_initial(state: ServeState) -> None:
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
