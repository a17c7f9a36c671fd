"""The continuous-batching generation engine on a tiny GPT-2 the test builds.

The backend is the real `TorchDecoder`; `Steered` wraps it to forbid eos (so sequences run to
their limit), to slow each step down, or to hold a step at a gate, which the time budget,
cancellation and queue tests need. No timing is asserted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from paperops.inference.decoding import SamplingParams, TorchDecoder, generate
from paperops.models.lm import load_lm, make_tiny_lm
from paperops.serve.batching import QueueFull
from paperops.serve.engine import EngineClosed, GenerationEngine
from tests.integration.gen_helpers import Steered

TEXTS = [
    f"the patient has had a fever of {i % 5 + 37} degrees and a cough for {i % 9} days"
    for i in range(60)
] + [f"what is the best treatment for {w} pain" for w in ("back", "knee", "neck", "tooth")] * 10
PROMPTS = ["the patient", "what is the best treatment for", "a cough", "fever of 38 degrees and"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch.set_num_threads(1)
    d = make_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "lm", TEXTS, train_steps=30)
    return load_lm(Path(d))


@pytest.fixture
def engine_factory() -> Any:
    engines: list[GenerationEngine] = []

    def make(backend: Any, **kwargs: Any) -> GenerationEngine:
        engine = GenerationEngine(backend, **kwargs).start()
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close(10)


def test_batched_greedy_equals_solo_and_rows_join_mid_batch(lm: Any, engine_factory: Any) -> None:
    backend = Steered(TorchDecoder(lm))
    params = SamplingParams(max_new_tokens=24, top_k=1)
    prompts = PROMPTS * 2
    solo = [list(generate(backend, lm.prompt_ids(p), params)) for p in prompts]
    assert all(len(s) == 24 for s in solo)
    backend.batch_sizes.clear()
    engine = engine_factory(backend, max_batch_size=8)
    # all at once (one batched prefill), then staggered (rows join a running batch)
    together = [engine.submit(lm.prompt_ids(p), params) for p in prompts]
    assert [r.wait(30).token_ids for r in together] == solo
    assert max(backend.batch_sizes) > 1
    staggered = []
    for p in prompts:
        staggered.append(engine.submit(lm.prompt_ids(p), params))
        time.sleep(0.002)
    results = [r.wait(30) for r in staggered]
    assert [r.token_ids for r in results] == solo
    assert {r.finish_reason for r in results} == {"length"}
    assert engine.stats.prefills >= 2 and engine.stats.largest_batch > 1


def test_sampling_is_reproducible_per_seed_alone_or_batched(lm: Any, engine_factory: Any) -> None:
    backend = TorchDecoder(lm)
    engine = engine_factory(backend, max_batch_size=8)

    def params(seed: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=seed)

    first = [engine.submit(lm.prompt_ids(p), params(i)) for i, p in enumerate(PROMPTS)]
    again = [engine.submit(lm.prompt_ids(p), params(i)) for i, p in enumerate(PROMPTS)]
    a = [r.wait(30) for r in first]
    b = [r.wait(30) for r in again]
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.seed for r in a] == [0, 1, 2, 3]
    solo = [list(generate(backend, lm.prompt_ids(p), params(i))) for i, p in enumerate(PROMPTS)]
    assert [r.token_ids for r in a] == solo
    unseeded = engine.submit(lm.prompt_ids(PROMPTS[0]), SamplingParams(max_new_tokens=5))
    assert isinstance(unseeded.wait(30).seed, int)


def test_cancel_stops_a_request_and_spares_the_others(lm: Any, engine_factory: Any) -> None:
    backend = Steered(TorchDecoder(lm), delay=0.005)
    engine = engine_factory(backend, max_batch_size=4, time_budget_s=None)
    long = SamplingParams(max_new_tokens=55, top_k=1)
    victim = engine.submit(lm.prompt_ids("the patient"), long)
    other = engine.submit(lm.prompt_ids("a cough"), SamplingParams(max_new_tokens=20, top_k=1))
    deadline = time.monotonic() + 10
    while not victim.tokens and time.monotonic() < deadline:
        time.sleep(0.001)
    victim.cancel()
    cancelled = victim.wait(30)
    assert cancelled.finish_reason == "cancelled"
    assert 1 <= cancelled.generated < 55
    assert other.wait(30).finish_reason == "length" and other.result is not None
    assert engine.stats.finished["cancelled"] == 1


def test_time_budget_ends_a_request(lm: Any, engine_factory: Any) -> None:
    backend = Steered(TorchDecoder(lm), delay=0.01)
    engine = engine_factory(backend, time_budget_s=0.05)
    r = engine.submit(lm.prompt_ids("the patient"), SamplingParams(max_new_tokens=55, top_k=1))
    result = r.wait(30)
    assert result.finish_reason == "time_budget"
    assert result.generated < 55


def test_context_limit_and_prompt_checks(lm: Any, engine_factory: Any) -> None:
    backend = Steered(TorchDecoder(lm))
    engine = engine_factory(backend)
    ctx = backend.context_length
    prompt = [backend.eos_token_id, *lm.encode(" ".join(["fever"] * 80))[: ctx - 11]]
    r = engine.submit(prompt, SamplingParams(max_new_tokens=100, top_k=1)).wait(30)
    assert r.finish_reason == "context" and r.generated == 10
    r = engine.submit(prompt, SamplingParams(max_new_tokens=10, top_k=1)).wait(30)
    assert r.finish_reason == "length" and r.generated == 10
    with pytest.raises(ValueError, match="context"):
        engine.submit([1] * ctx, SamplingParams(max_new_tokens=1))
    with pytest.raises(ValueError, match="no tokens"):
        engine.submit([], SamplingParams(max_new_tokens=1))


def test_full_queue_is_refused_and_close_finishes_accepted_work(
    lm: Any, engine_factory: Any
) -> None:
    backend = Steered(TorchDecoder(lm), gated=True)
    rejected: list[int] = []
    engine = engine_factory(
        backend, max_batch_size=1, queue_size=1, on_reject=lambda: rejected.append(1)
    )
    params = SamplingParams(max_new_tokens=3, top_k=1)
    running = engine.submit(lm.prompt_ids("the patient"), params)
    assert backend.entered.wait(10)  # the worker holds it at the gate: the queue is empty
    waiting = engine.submit(lm.prompt_ids("a cough"), params)
    with pytest.raises(QueueFull, match="queue is full") as info:
        engine.submit(lm.prompt_ids("fever"), params)
    assert info.value.retry_after_s == 1 and rejected == [1]
    backend.gate.set()
    assert engine.close(30)
    assert running.result is not None and running.result.generated == 3
    assert waiting.result is not None and waiting.result.generated == 3
    with pytest.raises(EngineClosed):
        engine.submit(lm.prompt_ids("late"), params)


def test_a_failing_backend_ends_the_requests_not_the_worker(lm: Any, engine_factory: Any) -> None:
    class Broken(Steered):
        fail = True

        def forward(self, *args: Any) -> Any:
            if self.fail:
                self.fail = False
                raise RuntimeError("the backend failed on purpose")
            return super().forward(*args)

    engine = engine_factory(Broken(TorchDecoder(lm)))
    bad = engine.submit(lm.prompt_ids("the patient"), SamplingParams(max_new_tokens=3)).wait(30)
    assert bad.finish_reason == "error" and "on purpose" in str(bad.error)
    good = engine.submit(lm.prompt_ids("the patient"), SamplingParams(max_new_tokens=3)).wait(30)
    assert good.finish_reason == "length"
