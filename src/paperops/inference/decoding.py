"""Decoding: KV-cache generation over any decoder backend (PyTorch or ONNX Runtime).

A backend runs one forward step: new tokens + the cached keys/values of earlier ones -> logits of
the last position and the grown cache. Everything else (sampling, stopping, streaming) lives
here, so the PyTorch and ONNX backends generate the same tokens for the same seed. Batches use
left padding: padded positions get attention_mask 0 and position ids count only real tokens,
so a row's logits do not depend on its neighbours (up to float rounding).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

Past = tuple[tuple[torch.Tensor, torch.Tensor], ...]
__all__ = [
    "DecoderBackend",
    "Past",
    "Sampler",
    "SamplingParams",
    "TorchDecoder",
    "generate",
    "left_pad",
    "new_seed",
]


@dataclass(frozen=True)
class SamplingParams:
    """What a request may set. top_k=0 is off; top_k=1 is greedy; top_p=1 is off."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False  # run to max_new_tokens (benchmarks: a fixed amount of work)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def new_seed() -> int:
    """A random seed a response can report, so any sample can be reproduced."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


@runtime_checkable
class DecoderBackend(Protocol):
    kind: str
    eos_token_id: int
    context_length: int
    vocab_size: int
    n_layer: int
    n_head: int
    head_dim: int

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: Past | None,
    ) -> tuple[torch.Tensor, Past]:
        """(b, vocab) float32 logits of the last position, and the cache including the input."""
        ...


class TorchDecoder:
    """The transformers GPT-2 model as a backend (eager PyTorch, KV cache)."""

    kind = "torch"

    def __init__(self, lm: Any) -> None:
        cfg = lm.model.config
        self.model = lm.model.eval()
        self.eos_token_id = int(lm.eos_token_id)
        self.context_length = int(lm.context_length)
        self.vocab_size = int(cfg.vocab_size)
        self.n_layer = int(cfg.n_layer)
        self.n_head = int(cfg.n_head)
        self.head_dim = int(cfg.n_embd) // int(cfg.n_head)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: Past | None,
    ) -> tuple[torch.Tensor, Past]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        return out.logits[:, -1, :].float(), present


class Sampler:
    """Temperature, top-k and nucleus (top-p) sampling from one seeded generator per request."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else new_seed()
        self.generator = torch.Generator().manual_seed(self.seed)

    def next_token(self, logits: torch.Tensor) -> int:
        p = self.params
        # float32 logits / a tiny temperature overflow to inf (then NaN in softmax): clamp it
        logits = logits.float() / max(p.temperature, 1e-4)
        if p.top_k == 1:
            return int(torch.argmax(logits))
        if 0 < p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            drop = (cum - sorted_p) >= p.top_p
            drop[0] = False  # a top_p below float precision still keeps the likeliest token
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def left_pad(
    rows: Sequence[Sequence[int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) for prompts of different lengths."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def generate(
    backend: DecoderBackend,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    should_stop: Callable[[], bool] | None = None,
    sampler: Sampler | None = None,
) -> Iterator[int]:
    """New token ids, one at a time; stops at eos (not yielded), max_new_tokens, the context
    length, or as soon as should_stop() says so (client gone, time budget spent)."""
    n = len(prompt_ids)
    if n == 0:
        raise ValueError("the prompt has no tokens")
    if n >= backend.context_length:
        raise ValueError(
            f"the prompt has {n} tokens; the model's context is {backend.context_length}"
        )
    sampler = sampler or Sampler(params)
    limit = min(params.max_new_tokens, backend.context_length - n)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    logits, past = backend.forward(
        ids, torch.ones_like(ids), torch.arange(n, dtype=torch.long)[None], None
    )
    for i in range(limit):
        token = sampler.next_token(logits[0])
        if token == backend.eos_token_id and not params.ignore_eos:
            return
        yield token
        if i == limit - 1 or (should_stop is not None and should_stop()):
            return
        length = n + i + 1
        logits, past = backend.forward(
            torch.tensor([[token]], dtype=torch.long),
            torch.ones((1, length), dtype=torch.long),
            torch.tensor([[length - 1]], dtype=torch.long),
            past,
        )
