"""`GeneratorState`: the language model next to the classifier in one app.

Holds the loaded generator (bundle or ONNX export) and its continuous-batching engine, loads it
in the background when asked, and logs every answered generation. Without a language model the
generation routes answer 503 with the reason and the classifier serves on.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from paperops.inference.generator import GeneratorLoader, LoadedGenerator
from paperops.requestlog.schema import GenerationRecord
from paperops.serve.batching import QueueFull
from paperops.serve.errors import ApiError
from paperops.serve.metrics import ServeMetrics
from paperops.serve.settings import GeneratorSettings

if TYPE_CHECKING:  # torch lives behind these: a classifier-only server never imports it
    from paperops.serve.engine import GenRequest, GenResult


log = logging.getLogger(__name__)


STATUS_CANCELLED = 499  # nginx's "client closed request": logged for generations cut short


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
        self.engine: Any | None = None  # paperops.serve.engine.GenerationEngine
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
        # deferred: pulls torch
        from paperops.serve.engine import GenerationEngine

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
        # deferred: pulls torch
        from paperops.serve.engine import EngineClosed

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
