"""Text generation over HTTP: `POST /v1/generate` (JSON or server-sent events) and `POST /infer`.

The language model is optional next to the classifier: `GeneratorState` holds it (loaded from an
LM bundle or LM export directory, or the registry's `paperops-generator` champion) and its
`GenerationEngine` (continuous batching in one worker thread). Without one, both routes answer
503 with the reason and the classifier serves on.

Validation happens before anything is queued: the prompt, the limits of `serve.generator`
(shown in the OpenAPI schema), then the prompt's length in tokens against the model's context
(422, field `prompt`, rule `context_length`). A streamed request whose client goes away is
cancelled at the engine's next step; every answered generation (cancelled ones included) gets a
row in the request log's `generations` table and counts in the `paperops_generation_*` metrics.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from paperops.inference.generator import LoadedGenerator
from paperops.serve.errors import ApiError
from paperops.serve.generator_state import GeneratorState
from paperops.serve.schemas import ERRORS_4XX, ErrorResponse
from paperops.serve.schemas_generate import GenerateResponse, InferResponse, make_generation_schemas
from paperops.serve.settings import GeneratorSettings
from paperops.serve.state import RequestIds

if TYPE_CHECKING:  # torch lives behind these: a classifier-only server never imports it
    from paperops.serve.engine import GenRequest, GenResult


GREEDY_BELOW = 1e-4  # a temperature or top_p below this decodes greedily


class TextStream:
    """Turns token ids into text pieces that concatenate to the final text: a piece that ends
    inside a multi-byte character is held back until the character is complete."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def make_generation_router(settings: GeneratorSettings) -> APIRouter:
    """/v1/generate and /infer with this app's limits; the state is `app.state.generator`."""

    schemas = make_generation_schemas(settings)
    GenerateRequest = schemas.GenerateRequest
    InferRequest = schemas.InferRequest
    new_request_id = RequestIds()
    router = APIRouter(tags=["generation"])
    errors: dict[int | str, dict[str, Any]] = {
        **ERRORS_4XX,
        503: {
            "model": ErrorResponse,
            "description": "No language model loaded, shutting down, or the generation queue is "
            "full (see Retry-After).",
        },
    }

    def state_of(request: Request) -> GeneratorState:
        return request.app.state.generator  # type: ignore[no-any-return]

    def response_body(
        request_id: str, gen: LoadedGenerator, prompt: str, text: str, r: "GenResult"
    ) -> dict[str, Any]:
        return {
            "id": request_id,
            "model": gen.summary(),
            "prompt": prompt,
            "text": text,
            "finish_reason": r.finish_reason,
            "seed": r.seed,
            "tokens": {"prompt": r.prompt_tokens - 1, "generated": r.generated},
            "timing": {
                "ttft_ms": None if r.ttft_s is None else round(r.ttft_s * 1000.0, 3),
                "total_ms": round(r.total_s * 1000.0, 3),
                "tokens_per_s": round(r.tokens_per_s, 3),
            },
        }

    async def wait_result(request: Request, handle: "GenRequest") -> "GenResult":
        """The result; a client that disconnects meanwhile cancels the generation."""

        async def watch() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    handle.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            return await handle.result_async()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            if handle.result is None:
                handle.cancel()

    def failed(r: "GenResult") -> ApiError:
        return ApiError(
            500,
            f"generation failed ({r.error or 'unknown error'}); see the server log",
            type_="generation_error",
        )

    @router.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses={
            **errors,
            200: {
                "description": "The continuation (JSON), or with ?stream=true server-sent "
                "events: `token` {index, text} per new token, then `done` (this JSON) or "
                "`error` {detail}.",
                "content": {"text/event-stream": {}},
            },
        },
    )
    async def generate(
        body: GenerateRequest,  # type: ignore[valid-type]
        request: Request,
        stream: bool = Query(False, description="Server-sent events, one per new token."),
    ) -> Response:
        """Continue a prompt with the language model (KV cache, batched with other requests)."""
        gs = state_of(request)
        gen, engine = gs.ready()  # 503 before anything imports torch
        # deferred: pulls torch
        from paperops.inference.decoding import SamplingParams

        prompt: str = body.prompt  # type: ignore[attr-defined]
        ids = gs.prompt_ids(gen, prompt)
        temperature: float = body.temperature  # type: ignore[attr-defined]
        top_k: int = body.top_k  # type: ignore[attr-defined]
        top_p: float = body.top_p  # type: ignore[attr-defined]
        if temperature < GREEDY_BELOW or top_p < GREEDY_BELOW:
            # the limits T -> 0 and top_p -> 0 are greedy; tiny values would overflow logits or
            # round to 0 in float32 (an empty nucleus)
            temperature, top_p, top_k = 1.0, 1.0, 1
        params = SamplingParams(
            max_new_tokens=body.max_new_tokens,  # type: ignore[attr-defined]
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=body.seed,  # type: ignore[attr-defined]
            ignore_eos=body.ignore_eos,  # type: ignore[attr-defined]
        )
        request_id = new_request_id()
        ctx = {"request_id": request_id, "route": "/v1/generate", "prompt": prompt, "gen": gen}
        handle = gs.submit(engine, ids, params, ctx)
        headers = {"X-Request-ID": request_id}
        if not stream:
            result = await wait_result(request, handle)
            await gs.logged(ctx)
            if result.finish_reason == "error":
                raise failed(result)
            body_out = response_body(request_id, gen, prompt, ctx.get("text", ""), result)
            return JSONResponse(body_out, headers=headers)

        async def events() -> AsyncIterator[str]:
            pieces = TextStream(gen.decode)
            index = 0
            try:
                async for kind, value in handle.events():
                    if kind == "token":
                        yield _sse("token", {"index": index, "text": pieces.push(value)})
                        index += 1
                    elif value.finish_reason == "error":
                        yield _sse("error", {"detail": failed(value).message})
                    else:
                        await gs.logged(ctx)
                        text = ctx.get("text", "")
                        yield _sse("done", response_body(request_id, gen, prompt, text, value))
            finally:
                if handle.result is None:  # the client went away (or the server is stopping)
                    handle.cancel()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post("/infer", response_model=InferResponse, responses=errors)
    async def infer(body: InferRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """The first report's shape: `{prompt, max_length}` -> prompt + continuation."""
        gs = state_of(request)
        gen, engine = gs.ready()  # 503 before anything imports torch
        # deferred: pulls torch
        from paperops.inference.decoding import SamplingParams

        prompt: str = body.prompt  # type: ignore[attr-defined]
        ids = gs.prompt_ids(gen, prompt)
        max_length = body.max_length  # type: ignore[attr-defined]
        n_prompt = len(ids) - 1
        if max_length is None:
            new = settings.default_max_new_tokens
        else:
            new = max_length - n_prompt
            if new < 1:
                raise ApiError(
                    422,
                    f"max_length ({max_length}) must be larger than the prompt's {n_prompt} "
                    "tokens: it counts the prompt too",
                    loc=["body", "max_length"],
                    type_="max_length_too_small",
                )
        params = SamplingParams(
            max_new_tokens=min(new, settings.max_new_tokens_cap),
            temperature=settings.temperature,
            top_p=settings.top_p,
        )
        request_id = new_request_id()
        ctx = {"request_id": request_id, "route": "/infer", "prompt": prompt, "gen": gen}
        handle = gs.submit(engine, ids, params, ctx)
        result = await wait_result(request, handle)
        await gs.logged(ctx)
        if result.finish_reason == "error":
            raise failed(result)
        return JSONResponse(
            {
                "prompt": prompt,
                "generated_text": prompt + ctx.get("text", ""),
                "model_version": gen.version,
                "tokens": {"prompt": n_prompt, "generated": result.generated},
            },
            headers={"X-Request-ID": request_id},
        )

    return router
