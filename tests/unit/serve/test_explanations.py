"""explain=true on the serving side: explanation work runs in the batcher's worker thread, one
task between two batches (other requests' batches never wait for a whole queue of it), and the
422 rules name the model and the setting."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from paperops.inference.predictor import load_predictor
from paperops.serve.batching import BatcherClosed, MicroBatcher
from paperops.serve.errors import ApiError
from paperops.serve.explanations import Explanations
from paperops.serve.settings import ExplainSettings, SettingsError
from tests.integration.serve_helpers import GatedRuntime, tiny_predictor
from tests.unit.serve.test_batching import TIMEOUT, run, texts, wait_until


def test_tasks_run_in_the_worker_one_between_two_batches() -> None:
    rt = GatedRuntime(gated=True)
    order: list[str] = []
    b = MicroBatcher(
        tiny_predictor(rt),
        max_batch_size=4,
        max_wait_ms=0,
        on_batch=lambda n, _s, _k: order.append(f"batch {n}"),
    ).start()
    threads: set[str] = set()

    def task(i: int) -> int:
        threads.add(threading.current_thread().name)
        order.append(f"task {i}")
        return i * 10

    async def go() -> list[object]:
        first = asyncio.ensure_future(b.submit(texts(0)))
        await wait_until(rt.entered.is_set)  # the worker is inside batch 1, held at the gate
        tasks = [asyncio.ensure_future(b.run_task(lambda i=i: task(i))) for i in range(3)]
        await asyncio.sleep(0.05)
        later = asyncio.ensure_future(b.submit(texts(1, 2)))
        await asyncio.sleep(0.05)
        rt.gate.set()
        return list(await asyncio.gather(first, *tasks, later))

    results = run(go())
    assert results[1:4] == [0, 10, 20]
    assert threads == {"paperops-batcher"} and rt.threads == {"paperops-batcher"}
    # batch 1, then ONE task, then the batch that arrived meanwhile, then the other tasks
    assert order == ["batch 1", "task 0", "batch 2", "task 1", "task 2"]
    assert b.stats.tasks == 3
    b.close(TIMEOUT)
    with pytest.raises(BatcherClosed):
        run(b.run_task(lambda: 1))


def test_a_failing_task_reaches_its_caller_and_the_worker_lives_on() -> None:
    b = MicroBatcher(tiny_predictor(GatedRuntime()), max_wait_ms=0).start()

    async def go() -> int:
        with pytest.raises(ZeroDivisionError):
            await b.run_task(lambda: 1 // 0)
        return len((await b.submit(texts(3))).predictions)

    assert run(go()) == 1
    b.close(TIMEOUT)


def _code(e: pytest.ExceptionInfo[ApiError]) -> tuple[int, str, list[str | int]]:
    d = e.value.detail[0]
    return e.value.status, d["type"], d["loc"]


def test_the_422_rules_name_the_model_and_the_setting() -> None:
    neural = tiny_predictor(GatedRuntime(), name="encoder-x", version="7")
    with pytest.raises(ApiError, match=r"serve.explain.enabled=false.*'encoder-x' v7") as e:
        Explanations(ExplainSettings(enabled=False)).check(neural, 1)
    assert _code(e) == (422, "explain_disabled", ["body", "explain"])
    with pytest.raises(ApiError, match=r"at most 2 papers.*has 3") as e:
        Explanations(ExplainSettings(max_papers=2)).check(neural, 3)
    assert _code(e)[1] == "explain_too_many_papers"
    only_linear = Explanations(ExplainSettings(methods=("linear",)))
    with pytest.raises(ApiError, match=r"model 'encoder-x' v7 \(family fake.*occlusion") as e:
        only_linear.check(neural, 1)
    assert _code(e)[1] == "explain_unsupported"
    Explanations(ExplainSettings()).check(neural, 8)  # occlusion over any runtime: fine
    with pytest.raises(SettingsError, match=r"serve\.explain\.methods"):
        ExplainSettings(methods=("shap",))


def test_explanations_of_a_request_come_from_the_model_that_answered(tfidf_bundle: Path) -> None:
    predictor = load_predictor(tfidf_bundle)
    b = MicroBatcher(predictor, max_wait_ms=0).start()
    service = Explanations(ExplainSettings(max_terms=3))
    papers = [("Graph neural networks", "We train a model. The loss falls."), ("Zqx", "Wvv.")]

    async def go() -> list[dict[str, object]]:
        result = await b.submit([f"{t}\n{a}" for t, a in papers])
        b.swap(tiny_predictor(GatedRuntime()))  # a reload after the answer: still tfidf's
        return await service.explain(b, papers, result)

    first, unknown = run(go())
    assert first["method"] == "linear" and 0 < len(first["terms"]) <= 3  # type: ignore[arg-type]
    assert unknown["terms"] == [] and "vocabulary" in str(unknown["reason"])
    b.close(TIMEOUT)
