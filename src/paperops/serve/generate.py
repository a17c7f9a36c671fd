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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from paperops.serve.metrics import ServeMetrics
from paperops.serve.schemas import ErrorResponse, _text_rule
from paperops.serve.settings import GeneratorSettings

if TYPE_CHECKING:  # torch lives behind these: a classifier-only server never imports it
    from paperops.serve.gen_engine import GenRequest, GenResult

log = logging.getLogger(__name__)

EXAMPLE_PROMPT = "What are the early symptoms of diabetes?"
WARMUP_PROMPT = "Warm-up"
MAX_SEED = 2**63 - 1
GREEDY_BELOW = 1e-4  # a temperature or top_p below this decodes greedily
STATUS_CANCELLED = 499  # nginx's "client closed request": logged for generations cut short


# --- the loaded model ------------------------------------------------------------------------


@dataclass
class LoadedGenerator:
    """A decoder backend plus its tokenizer functions and what /v1/model reports."""

    backend: Any  # paperops.generation.DecoderBackend
    prompt_ids: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    name: str
    version: str
    runtime: str
    source: str
    corpus: str | None = None  # what it was trained on (model.json), e.g. for example prompts
    loaded_at: float = field(default_factory=time.time)

    @property
    def context_length(self) -> int:
        return int(self.backend.context_length)

    def summary(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "family": "lm", "runtime": self.runtime}


def _is_lm_export(path: Path) -> bool:
    meta = path / "export.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("family") == "lm"
    except (OSError, ValueError, AttributeError):
        return False


def load_generator(
    path: Path,
    *,
    runtime: str = "torch",
    threads: int | None = None,
    name: str | None = None,
    version: str | None = None,
    source: str | None = None,
) -> LoadedGenerator:
    """An LM bundle (torch) or an LM export directory (ONNX Runtime), warmed up.

    runtime: torch (a bundle), onnx / onnx-int8 (an export directory), auto (whichever the
    directory is). Raises ModelLoadError naming the directory and the fix."""
    from paperops.models.base import ModelLoadError, read_meta

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory: pass an LM bundle or LM export directory")
    is_export = _is_lm_export(path)
    if runtime == "auto":  # an export serves its int8 graph when it has one (as classifiers do)
        int8 = (path / "decoder.int8.onnx").is_file()
        runtime = ("onnx-int8" if int8 else "onnx") if is_export else "torch"
    if runtime in ("onnx", "onnx-int8"):
        if not is_export:
            raise ModelLoadError(
                f"{path} is not an LM export (no export.json with family lm): serve it with "
                "serve.generator.runtime=torch, or export it first (`paperops export --model "
                f"{path}`)"
            )
        try:
            from paperops.serve.onnx_decoder import OnnxDecoder
        except ImportError as e:
            raise ModelLoadError(
                f"ONNX decoding is not available ({e}); use serve.generator.runtime=torch"
            ) from e
        backend: Any = OnnxDecoder.load(path, int8=runtime == "onnx-int8", threads=threads)
        prompt_ids, decode = backend.prompt_ids, backend.decode
        meta: dict[str, Any] = json.loads((path / "export.json").read_text())
        if (path / "model.json").is_file():  # the bundle's own facts (corpus) travel with it
            meta = {**read_meta(path), **meta}
    elif runtime == "torch":
        if is_export:
            raise ModelLoadError(
                f"{path} is an ONNX export: serve it with serve.generator.runtime=onnx, or pass "
                "the LM bundle for torch"
            )
        import torch

        from paperops.generation import TorchDecoder
        from paperops.models.lm import load_lm

        meta = read_meta(path)
        if meta.get("family") != "lm":
            raise ModelLoadError(
                f"{path} holds a {meta.get('family')!r} model, not a language model (family lm); "
                "pass an LM bundle (`paperops train experiment=lm_mqp`)"
            )
        if threads is not None:
            torch.set_num_threads(int(threads))
        lm = load_lm(path)
        backend = TorchDecoder(lm)
        prompt_ids, decode = lm.prompt_ids, lm.decode
    else:
        raise ModelLoadError(f"unknown generator runtime {runtime!r}")
    gen = LoadedGenerator(
        backend=backend,
        prompt_ids=prompt_ids,
        decode=decode,
        name=name or str(meta.get("name") or path.name),
        version=str(version or meta.get("version") or "local"),
        runtime=str(getattr(backend, "kind", runtime)),
        source=source or str(path),
        corpus=None if meta.get("corpus") is None else str(meta.get("corpus")),
    )
    _warm(gen)
    return gen


def _warm(gen: LoadedGenerator) -> None:
    """A prefill and one decode step before serving: lazy init is not the first user's cost."""
    from paperops.generation import SamplingParams, generate

    ids = gen.prompt_ids(WARMUP_PROMPT)[: max(1, gen.context_length - 2)]
    for _ in generate(gen.backend, ids, SamplingParams(2, top_k=1, seed=0)):
        pass


GeneratorLoader = Callable[[], LoadedGenerator]


# --- the state of one app --------------------------------------------------------------------


class GeneratorState:
    """The generator of one app: loaded or not (and why), its engine, and its hooks into the
    metrics and the request log."""

    def __init__(
        self,
        settings: GeneratorSettings,
        metrics: ServeMetrics,
        *,
        loader: GeneratorLoader | None = None,
        generator: LoadedGenerator | None = None,
        error: str | None = None,
        reqlog: Callable[[], Any] = lambda: None,
        confirm_logged: Callable[[int | None], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader
        self.preloaded = generator
        self.gen: LoadedGenerator | None = None
        self.engine: Any | None = None  # paperops.serve.gen_engine.GenerationEngine
        self.error = error
        self.loading = False
        self.reqlog = reqlog
        self.confirm_logged = confirm_logged
        self._task: asyncio.Task[None] | None = None
        metrics.bind_generation(
            lambda: self.engine.active if self.engine else 0,
            lambda: self.engine.queue_depth if self.engine else 0,
        )

    # -- lifecycle --

    async def start(self) -> None:
        if self.preloaded is not None:
            self.install(self.preloaded)
        elif self.loader is not None and self.error is None:
            self._task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        if self.loader is None:
            return
        self.loading = True
        try:
            gen = await anyio.to_thread.run_sync(self.loader)
        except Exception as e:
            self.error = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            (log.error if self.settings.required else log.warning)(
                "no language model: %s (/v1/generate answers 503)", self.error
            )
            return
        finally:
            self.loading = False
        self.install(gen)

    def install(self, gen: LoadedGenerator) -> None:
        from paperops.serve.gen_engine import GenerationEngine

        s = self.settings
        runtime = gen.runtime
        self.engine = GenerationEngine(
            gen.backend,
            max_batch_size=s.max_batch_size,
            queue_size=s.queue_size,
            time_budget_s=s.time_budget_s,
            retry_after_s=s.retry_after_s,
            on_step=lambda size, tokens, secs: self.metrics.observe_generation_step(
                size, tokens, secs, runtime
            ),
            on_reject=self.metrics.gen_rejected.inc,
        ).start()
        self.gen = gen
        self.error = None
        self.metrics.set_generator(gen.summary())
        log.info("generator ready: %s v%s (%s)", gen.name, gen.version, gen.runtime)

    async def close(self, timeout: float) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.engine is not None:
            stopped = await anyio.to_thread.run_sync(self.engine.close, timeout)
            if not stopped:
                log.error("the generation worker did not finish within %.1f s", timeout)

    def not_ready_reason(self) -> str | None:
        if self.engine is not None and self.engine.running:
            return None
        if self.engine is not None:
            return "the generation worker is not running (shutting down?)"
        if self.loading:
            return "the language model is still loading"
        if self.error:
            return self.error
        if self.settings.enabled is False:
            return "the generator is disabled (serve.generator.enabled=false)"
        return "none was configured (serve.generator.model or --generator PATH)"

    def info(self) -> dict[str, Any] | None:
        gen = self.gen
        if gen is None:
            return None
        return {
            **gen.summary(),
            "source": gen.source,
            "corpus": gen.corpus,
            "context_length": gen.context_length,
            "max_new_tokens_cap": self.settings.max_new_tokens_cap,
            "default_max_new_tokens": self.settings.default_max_new_tokens,
            "prompt_max_chars": self.settings.prompt_max_chars,
            "time_budget_s": self.settings.time_budget_s,
            "max_batch_size": self.settings.max_batch_size,
            "loaded_at": gen.loaded_at,
        }

    # -- requests --

    async def logged(self, ctx: dict[str, Any]) -> None:
        """Wait (bounded) for the generation's log row to be committed before answering."""
        if self.confirm_logged is not None:
            await self.confirm_logged(ctx.get("log_seq"))

    def ready(self) -> tuple[LoadedGenerator, Any]:
        from paperops.serve.app import ApiError

        reason = self.not_ready_reason()
        if reason is not None or self.gen is None or self.engine is None:
            raise ApiError(
                503,
                f"no language model is loaded: {reason}",
                type_="no_generator",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        return self.gen, self.engine

    def prompt_ids(self, gen: LoadedGenerator, prompt: str, field: str = "prompt") -> list[int]:
        from paperops.serve.app import ApiError

        ids = gen.prompt_ids(prompt)
        ctx = gen.context_length
        if len(ids) >= ctx:
            raise ApiError(
                422,
                f"the prompt is {len(ids) - 1} tokens long; the model's context is {ctx} tokens "
                f"(at most {ctx - 2} prompt tokens leave room for one new token)",
                loc=["body", field],
                type_="context_length",
            )
        return ids

    def submit(
        self, engine: Any, ids: list[int], params: Any, context: dict[str, Any]
    ) -> "GenRequest":
        from paperops.serve.app import ApiError
        from paperops.serve.gen_engine import EngineClosed, QueueFull

        try:
            return engine.submit(
                ids,
                params,
                loop=asyncio.get_running_loop(),
                on_finish=self._finished,
                context=context,
            )
        except QueueFull as e:
            raise ApiError(
                503, str(e), type_="queue_full", headers={"Retry-After": str(e.retry_after_s)}
            ) from None
        except EngineClosed as e:
            raise ApiError(
                503,
                str(e),
                type_="shutting_down",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None

    def _finished(self, req: "GenRequest", result: "GenResult") -> None:
        """In the engine's thread when a request ends: metrics and the request-log row."""
        ctx = req.context or {}
        gen = ctx.get("gen")
        text = gen.decode(result.token_ids).rstrip("\ufffd") if gen is not None else ""
        ctx["text"] = text
        self.metrics.observe_generation(
            result.finish_reason,
            result.ttft_s,
            result.tokens_per_s if result.generated else None,
        )
        reqlog = self.reqlog()
        if reqlog is None:
            return
        from paperops.serve.reqlog import GenerationRecord

        status = {"cancelled": STATUS_CANCELLED, "error": 500}.get(result.finish_reason, 200)
        # read by the handler once the result is out: it answers after the row is committed
        ctx["log_seq"] = reqlog.put(
            GenerationRecord(
                request_id=str(ctx.get("request_id", "")),
                ts=time.time(),
                route=str(ctx.get("route", "")),
                model_version=gen.version if gen is not None else "",
                prompt=str(ctx.get("prompt", "")),
                text=text,
                prompt_tokens=result.prompt_tokens - 1,  # the leading <|endoftext|> is ours
                generated_tokens=result.generated,
                finish_reason=result.finish_reason,
                ttft_ms=None if result.ttft_s is None else result.ttft_s * 1000.0,
                total_ms=result.total_s * 1000.0,
                seed=result.seed,
                status=status,
            )
        )


# --- request and response models -------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSchemas:
    GenerateRequest: type[BaseModel]
    InferRequest: type[BaseModel]


def make_generation_schemas(g: GeneratorSettings) -> GenerationSchemas:
    prompt_t = Annotated[
        str,
        Field(
            min_length=1,
            max_length=g.prompt_max_chars,
            description=(
                f"The text to continue (1-{g.prompt_max_chars} characters, not only "
                "whitespace, and shorter than the model's context in tokens)."
            ),
            json_schema_extra={"pattern": r"\S"},
        ),
        _text_rule("prompt"),
    ]

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={
                "examples": [{"prompt": EXAMPLE_PROMPT, "max_new_tokens": 32, "seed": 1}]
            },
        )
        prompt: prompt_t  # type: ignore[valid-type]
        max_new_tokens: int = Field(
            default=g.default_max_new_tokens,
            ge=1,
            le=g.max_new_tokens_cap,
            description=f"New tokens at most (1-{g.max_new_tokens_cap}).",
        )
        temperature: float = Field(
            default=g.temperature,
            gt=0,
            le=5,
            description="Sampling temperature, in (0, 5]; below 1e-4 decoding is greedy.",
        )
        top_p: float = Field(
            default=g.top_p,
            gt=0,
            le=1,
            description="Nucleus sampling mass, in (0, 1]; 1 = off; below 1e-4 greedy.",
        )
        top_k: int = Field(
            default=0,
            ge=0,
            le=1_000_000,
            description="Sample from the k likeliest; 0 = off, 1 = greedy.",
        )
        seed: int | None = Field(
            default=None,
            ge=0,
            le=MAX_SEED,
            description="Random seed: the same request with the same seed gives the same text. "
            "Null = a fresh one (returned in the response).",
        )
        ignore_eos: bool = Field(
            default=False,
            description="Keep generating past end-of-text up to max_new_tokens (a fixed amount "
            "of work per request, for benchmarks).",
        )

    class InferRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={"examples": [{"prompt": EXAMPLE_PROMPT}]},
        )
        prompt: prompt_t  # type: ignore[valid-type]
        max_length: int | None = Field(
            default=None,
            ge=2,
            le=1_000_000,
            description="Total tokens, prompt included (as HF generate's max_length); new tokens "
            f"are capped at {g.max_new_tokens_cap}. Null = {g.default_max_new_tokens} new tokens.",
        )

    return GenerationSchemas(GenerateRequest, InferRequest)


class GenModel(BaseModel):
    name: str
    version: str
    family: str
    runtime: str


class GenTokens(BaseModel):
    prompt: int
    generated: int


class GenTiming(BaseModel):
    ttft_ms: float | None
    total_ms: float
    tokens_per_s: float


class GenerateResponse(BaseModel):
    id: str
    model: GenModel
    prompt: str
    text: str = Field(description="The generated continuation only.")
    finish_reason: str = Field(description="eos | length | context | time_budget")
    seed: int
    tokens: GenTokens
    timing: GenTiming


class InferResponse(BaseModel):
    prompt: str
    generated_text: str = Field(description="The prompt followed by its continuation.")
    model_version: str
    tokens: GenTokens


class GeneratorInfoOut(BaseModel):
    name: str
    version: str
    family: str
    runtime: str
    source: str
    corpus: str | None = None
    context_length: int
    max_new_tokens_cap: int
    default_max_new_tokens: int
    prompt_max_chars: int
    time_budget_s: float
    max_batch_size: int
    loaded_at: float


# --- streaming text --------------------------------------------------------------------------


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


# --- the router ------------------------------------------------------------------------------


def make_generation_router(settings: GeneratorSettings) -> APIRouter:
    """/v1/generate and /infer with this app's limits; the state is `app.state.generator`."""
    from paperops.serve.app import ApiError, RequestIds

    schemas = make_generation_schemas(settings)
    GenerateRequest = schemas.GenerateRequest
    InferRequest = schemas.InferRequest
    new_request_id = RequestIds()
    router = APIRouter(tags=["generation"])
    errors: dict[int | str, dict[str, Any]] = {
        422: {"model": ErrorResponse, "description": "Invalid input: field and rule in detail."},
        413: {"model": ErrorResponse, "description": "Body over serve.limits.max_body_bytes."},
        415: {"model": ErrorResponse, "description": "Content-Type is not application/json."},
        408: {
            "model": ErrorResponse,
            "description": "Body not received within serve.limits.body_timeout_s.",
        },
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
        from paperops.generation import SamplingParams

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
        from paperops.generation import SamplingParams

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
