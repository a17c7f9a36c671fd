"""`explain=true` on /v1/classify: the 422 rules, one explainer per served model, and the work
itself in the micro-batcher's task lane.

Why this shape: the answers come first, batched with everyone else's (an explaining request
costs other clients nothing in the batch); then each of its papers is explained as one task in
the batcher's worker thread (the runtime keeps a single caller), one task between two batches,
so other requests' batches wait at most one paper's explanation (linear: ~1 ms; occlusion:
`max_sentences` + 1 texts through the encoder). `serve.explain.max_papers` bounds a request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from paperops.inference.explain import CannotExplain, Explainer, Paper, describe, make_explainer
from paperops.inference.predictor import Predictor
from paperops.serve.batching import BatcherClosed, BatchResult, MicroBatcher, QueueFull
from paperops.serve.errors import ApiError
from paperops.serve.settings import ExplainSettings

log = logging.getLogger(__name__)
LOC = ("body", "explain")


class Explanations:
    """What one app knows about explaining: its settings and an explainer per served model."""

    def __init__(self, settings: ExplainSettings) -> None:
        self.settings = settings
        self._by_predictor: weakref.WeakKeyDictionary[Predictor, Explainer | CannotExplain] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def check(self, predictor: Predictor | None, n_papers: int) -> None:
        """422 before any inference when this request's explain=true cannot be served."""
        s = self.settings
        if not s.enabled:
            who = f"; {describe(predictor.info)} answers without them" if predictor else ""
            raise ApiError(
                422,
                "explanations are turned off on this server (serve.explain.enabled=false)" + who,
                loc=LOC,
                type_="explain_disabled",
            )
        if n_papers > s.max_papers:
            raise ApiError(
                422,
                f"explain=true takes at most {s.max_papers} papers per request "
                f"(serve.explain.max_papers); this one has {n_papers}: send the rest without "
                "explain, or in more requests",
                loc=LOC,
                type_="explain_too_many_papers",
            )
        if predictor is not None:
            self.explainer(predictor)

    def availability(self, predictor: Predictor) -> dict[str, Any]:
        """What /v1/model says: can this server explain this model, how, and if not, why."""
        s = self.settings
        out: dict[str, Any] = {"available": False, "method": None, "max_papers": s.max_papers}
        if not s.enabled:
            return out | {"reason": "explanations are turned off (serve.explain.enabled=false)"}
        try:
            found = self.explainer(predictor)
        except ApiError as e:
            return out | {"reason": e.message}
        return out | {"available": True, "method": found.method, "reason": None}

    def explainer(self, predictor: Predictor) -> Explainer:
        """The model's explainer (built once per loaded model), or a 422 naming the model."""
        with self._lock:
            found = self._by_predictor.get(predictor)
            if found is None:
                s = self.settings
                try:
                    found = make_explainer(
                        predictor,
                        methods=s.methods,
                        max_terms=s.max_terms,
                        max_sentences=s.max_sentences,
                    )
                except CannotExplain as e:
                    found = e
                self._by_predictor[predictor] = found
        if isinstance(found, CannotExplain):
            raise ApiError(422, str(found), loc=LOC, type_="explain_unsupported")
        return found

    async def explain(
        self, batcher: MicroBatcher, papers: Sequence[Paper], result: BatchResult
    ) -> list[dict[str, Any]]:
        """One explanation per paper, of the label it was answered with, by the model that
        answered (a reload in between does not mix two models)."""
        predictor = result.predictor or batcher.predictor
        explainer = self.explainer(predictor)
        labels = [p.label for p in result.predictions]

        def task(i: int) -> dict[str, Any]:
            return explainer.explain([papers[i]], [labels[i]])[0].to_dict()

        try:
            return list(
                await asyncio.gather(
                    *(batcher.run_task(lambda i=i: task(i)) for i in range(len(papers)))
                )
            )
        except QueueFull as e:
            raise ApiError(
                503, str(e), type_="queue_full", headers={"Retry-After": str(e.retry_after_s)}
            ) from None
        except BatcherClosed as e:
            raise ApiError(503, str(e), type_="shutting_down") from None
        except Exception as e:
            log.exception("explanation failed")
            raise ApiError(
                500,
                f"explanation failed ({type(e).__name__}); see the server log",
                type_="explain_error",
            ) from None
