"""Training the language model: `LMModule` (the LightningModule: next-token loss, perplexity,
AdamW with warm-up) and block packing of the corpus. The family itself (tokenizer, `CausalLM`,
the bundle) is `models.lm`; this module is only imported where a model is fitted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from paperops.config import dataclass_from_mapping
from paperops.models.base import LM_FAMILY as FAMILY


@dataclass
class LMConfig:
    """`configs/model/lm.yaml`; architecture keys are ignored when `pretrained` is set."""

    family: str = FAMILY
    pretrained: str | None = None  # HF name in the local cache or a local dir: fine-tune it
    tokenizer: str | None = None  # tokenizer.json / HF dir; null = pretrained's or a new BPE
    vocab_size: int = 8000  # BPE trained on the training split
    min_frequency: int = 2
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    context_length: int = 128
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    batch_size: int = 16
    eval_batch_size: int = 32
    sample_prompts: list[str] = field(default_factory=list)
    sample_max_new_tokens: int = 40
    sample_temperature: float = 0.8
    sample_top_p: float = 0.95

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise ValueError(f"model.family must be {FAMILY!r} for LMConfig, got {self.family!r}")
        checks = {
            "vocab_size": self.vocab_size >= 260,  # 256 bytes + specials
            "n_layer": self.n_layer >= 1,
            "n_embd": self.n_embd >= 8 and self.n_embd % self.n_head == 0,
            "context_length": self.context_length >= 8,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "dropout": 0 <= self.dropout < 1,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"model.{bad[0]}={getattr(self, bad[0])!r} is out of range (vocab_size >= 260, "
                "n_embd divisible by n_head, context_length >= 8, lr > 0, 0 <= dropout < 1)"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LMConfig:
        return dataclass_from_mapping(cls, values, "model")  # type: ignore[return-value]


def pack_blocks(
    docs: Sequence[Sequence[int]], eos: int, block: int, *, keep_tail: bool = False
) -> list[list[int]]:
    """Concatenate documents (each followed by eos, the first preceded by one) into blocks.

    keep_tail keeps the last partial block (evaluation: every token counts once); training drops
    it so every batch has full blocks.
    """
    stream: list[int] = [eos]
    for d in docs:
        stream.extend(d)
        stream.append(eos)
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    if blocks and len(blocks[-1]) < (2 if keep_tail else block):
        blocks.pop()
    return blocks


def _pad_blocks(blocks: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(b) for b in blocks)
    ids = torch.full((len(blocks), width), pad, dtype=torch.long)
    mask = torch.zeros((len(blocks), width), dtype=torch.long)
    for i, b in enumerate(blocks):
        ids[i, : len(b)] = torch.tensor(list(b), dtype=torch.long)
        mask[i, : len(b)] = 1
    return ids, mask


def _sum_token_loss(
    model: Any, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy over real (unpadded) targets, and their count."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:]
    keep = mask[:, 1:].bool()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
    )
    keep_flat = keep.reshape(-1)
    return loss[keep_flat].sum(), keep_flat.sum()


class LMModule(L.LightningModule):
    """Next-token loss; AdamW (no decay on biases/LayerNorms), linear warm-up then cosine.

    val_loss is the token-weighted mean over the whole validation set (summed across DDP ranks),
    so val_perplexity = exp(val_loss) is exactly the held-out perplexity.
    """

    def __init__(self, model: Any, config: LMConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.seen_ranks: list[int] = []
        self._val_sum = torch.zeros(())
        self._val_n = torch.zeros(())

    def on_train_start(self) -> None:
        ranks = self.all_gather(torch.tensor([self.global_rank], device=self.device))
        self.seen_ranks = sorted(int(r) for r in torch.as_tensor(ranks).flatten().tolist())

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (ids,) = batch
        loss = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(ids)
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_n = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        ids, mask = batch
        s, n = _sum_token_loss(self.model, ids, mask)
        self._val_sum += s.double()
        self._val_n += n.double()

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        n = self.trainer.strategy.reduce(self._val_n, reduce_op="sum")
        loss = (total / n.clamp(min=1)).float()
        self.log("val_loss", loss, prog_bar=True, sync_dist=False)
        self.log("val_perplexity", torch.exp(loss.clamp(max=50)), prog_bar=True)

    def configure_optimizers(self) -> Any:
        c = self.config
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "ln_" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": c.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=c.lr,
            betas=(0.9, 0.95),
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(c.warmup_steps, max(total // 10, 1))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
