"""Helpers for the generation API tests: a tiny LM bundle, a steerable decoder, SSE parsing.

`Steered` wraps the real `TorchDecoder` of a tiny model the tests build: it can forbid eos (so a
generation runs to its limit), slow each decode step down, or hold one at a gate, for the tests
that need a generation to be in flight when something happens (a client disconnect, a full
queue). Servers still run on real uvicorn over TCP (`serve_helpers.serve_app`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from paperops.inference.decoding import Past, TorchDecoder
from paperops.inference.generator import LoadedGenerator
from paperops.models.lm import load_lm, make_tiny_lm

LM_TEXTS = [
    f"the patient has had a fever of {i % 5 + 37} degrees and a cough for {i % 9} days"
    for i in range(60)
] + [f"what is the best treatment for {w} pain" for w in ("back", "knee", "neck", "tooth")] * 10


def build_tiny_lm(directory: Path, *, context_length: int = 64) -> Path:
    """A trained-for-30-steps 2-layer GPT-2 bundle (under a second on one core)."""
    torch.set_num_threads(1)
    return Path(make_tiny_lm(directory, LM_TEXTS, train_steps=30, context_length=context_length))


class Steered:
    """A real decoder with eos forbidden, an optional delay per step and an optional gate."""

    def __init__(self, inner: TorchDecoder, *, delay: float = 0.0, gated: bool = False) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.eos_token_id = inner.eos_token_id
        self.context_length = inner.context_length
        self.vocab_size = inner.vocab_size
        self.n_layer, self.n_head, self.head_dim = inner.n_layer, inner.n_head, inner.head_dim
        self.delay = delay
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def forward(
        self, input_ids: Any, attention_mask: Any, position_ids: Any, past: Past | None
    ) -> tuple[torch.Tensor, Past]:
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("test gate never opened")
        if self.delay:
            time.sleep(self.delay)
        self.batch_sizes.append(int(input_ids.shape[0]))
        logits, new_past = self.inner.forward(input_ids, attention_mask, position_ids, past)
        logits = logits.clone()
        logits[:, self.eos_token_id] = float("-inf")
        return logits, new_past


def steered_generator(bundle: Path, **kwargs: Any) -> tuple[LoadedGenerator, Steered]:
    """A `LoadedGenerator` over `Steered(TorchDecoder(load_lm(bundle)), **kwargs)`."""
    lm = load_lm(bundle)
    backend = Steered(TorchDecoder(lm), **kwargs)
    gen = LoadedGenerator(
        backend=backend,
        prompt_ids=lm.prompt_ids,
        decode=lm.decode,
        name="steered",
        version="1",
        runtime="torch",
        source=str(bundle),
    )
    return gen, backend


def parse_sse(lines: Iterable[str]) -> list[tuple[str, Any]]:
    """`event:` / `data:` blocks -> [(event, parsed JSON data)]."""
    events: list[tuple[str, Any]] = []
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                events.append((event, json.loads("\n".join(data))))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
    if data:
        events.append((event, json.loads("\n".join(data))))
    return events


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of a Prometheus exposition (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return float(sample.value)
    return 0.0
