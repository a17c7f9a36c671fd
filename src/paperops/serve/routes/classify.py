"""Classification: `/v1/model`, `/v1/classify`, `/predict` (the first report's shape), feedback.

Every answer goes through the micro-batcher (`ServeState.infer`), is logged by request id, and
with a durable request log waits for its row's commit (`ServeState.confirm_logged`).
"""

import logging
import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from paperops.data.text import model_text
from paperops.requestlog.schema import FeedbackRecord
from paperops.serve import schemas as S
from paperops.serve.errors import ApiError
from paperops.serve.schemas_generate import GeneratorInfoOut
from paperops.serve.state import (
    ServeState,
    check_cross_lists,
    cross_lists_out,
    request_start,
    score,
    summary,
)

log = logging.getLogger(__name__)


def make_classify_router(state: ServeState) -> APIRouter:
    settings, metrics, limits = state.settings, state.metrics, state.settings.limits
    gen_state = state.generator
    schemas = state.schemas
    ClassifyRequest = schemas.ClassifyRequest
    PredictRequest = schemas.PredictRequest
    FeedbackRequest = schemas.FeedbackRequest
    new_request_id = state.new_request_id
    router = APIRouter()

    # --- the model ---

    class ModelResponse(S.ModelResponse):
        generator: GeneratorInfoOut | None = None

    @router.get(
        "/v1/model", response_model=ModelResponse, responses=S.BUSY, tags=["classification"]
    )
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
            "explain": state.explanations.availability(p),
            "generator": gen_state.info(),
        }

    # --- classification ---

    @router.post(
        "/v1/classify",
        response_model=S.ClassifyResponse,
        responses={**S.ERRORS_4XX, **S.BUSY},
        tags=["classification"],
    )
    async def classify(body: ClassifyRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Classify 1..max_papers papers: top categories with calibrated probabilities and a
        conformal prediction set per paper, answered in input order; with explain=true, also
        why (the terms or sentences that pushed each label most)."""
        start = request_start(request)
        papers = [(p.title, p.abstract) for p in body.papers]  # type: ignore[attr-defined]
        explain = body.explain  # type: ignore[attr-defined]
        if explain:
            state.explanations.check(state.predictor, len(papers))
        cross_lists = body.cross_lists  # type: ignore[attr-defined]
        if cross_lists:
            check_cross_lists(state.predictor)
        texts = [model_text(t, a) for t, a in papers]
        top_k = body.top_k  # type: ignore[attr-defined]
        result = await state.infer(request, texts, top_k, cross_lists)
        if cross_lists and result.predictor is not None:
            check_cross_lists(result.predictor)  # a reload swapped in a model without a head
        why = None
        if explain and state.batcher is not None:
            why = await state.explanations.explain(state.batcher, papers, result)
        info = result.info
        request_id = new_request_id()
        results = [
            {
                "id": paper.id,
                "label": p.label,
                "name": p.name,
                "confidence": p.confidence,
                "top": [score(s) for s in p.top],
                "prediction_set": [score(s) for s in p.prediction_set],
                "archive": None if p.archive is None else score(p.archive),
            }
            for paper, p in zip(body.papers, result.predictions, strict=True)  # type: ignore[attr-defined]
        ]
        if cross_lists:
            for res, p in zip(results, result.predictions, strict=True):
                res["cross_lists"] = cross_lists_out(p)
        for res, explanation in zip(results, why or (), strict=False):
            res["explanation"] = explanation
        metrics.observe_papers((len(t) + len(a) for t, a in papers), result.predictions)
        seq = state.log_request(request_id, "/v1/classify", start, info, papers, result.predictions)
        await state.confirm_logged(seq)
        return JSONResponse(
            {
                "request_id": request_id,
                "model": summary(info),
                "coverage_target": info.coverage_target,
                "results": results,
            },
            headers={"X-Request-ID": request_id},
        )

    @router.post(
        "/predict",
        response_model=S.PredictResponse,
        responses={**S.ERRORS_4XX, **S.BUSY},
        tags=["classification"],
    )
    async def predict(body: PredictRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """One paper, in the first report's shape; the request id is in X-Request-ID."""
        start = request_start(request)
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

    @router.post(
        "/v1/feedback",
        status_code=202,
        response_model=S.FeedbackAccepted,
        responses={
            404: {"model": S.ErrorResponse, "description": "No such request id."},
            **S.ERRORS_4XX,
            **S.BUSY,
        },
        tags=["classification"],
    )
    async def feedback(body: FeedbackRequest) -> Response:  # type: ignore[valid-type]
        """Report the true label of a paper you classified (by request id and index)."""

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

    # --- benchmark ceiling ---

    if settings.benchmark_endpoints:

        @router.post("/v1/noop", include_in_schema=False)
        async def noop(body: ClassifyRequest) -> Response:  # type: ignore[valid-type]
            """Validates like /v1/classify and answers at once: the HTTP ceiling."""
            return JSONResponse({"papers": len(body.papers)})  # type: ignore[attr-defined]

    return router
