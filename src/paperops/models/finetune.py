"""The sentence encoder fine-tuned end to end with a classification head (Lightning).

Encoder (same pooling as its sentence-transformers config) -> dropout -> Linear. Standard
fine-tuning recipe: AdamW with layer-wise LR decay (the top transformer layer gets `lr`, each
layer below `lr * layerwise_lr_decay ** depth`, embeddings the lowest, the fresh head `head_lr`),
optional freezing of the embeddings + bottom layers, linear warmup then linear or cosine decay
stepped per optimizer step, and optionally LoRA adapters (PEFT) instead of full fine-tuning.

The bundle is plain: `encoder/` (a sentence-transformers directory, safetensors; LoRA adapters
are merged into the weights first), `head.safetensors` and `model.json`. Loading needs neither
PEFT nor the original encoder.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from paperops.data.datamodule import TextSplit
from paperops.io import atomic_dir, atomic_write_text
from paperops.models.base import META_FILE, ModelLoadError, check_label_map
from paperops.models.embedding import config_from_mapping
from paperops.models.encoder import Encoder, fingerprint_dir, load_encoder, tokenize_texts
from paperops.models.lightning import (
    ClassificationModule,
    check_fit_splits,
    class_weight_tensor,
    compute_device,
    configure_threads,
    fit_module,
    read_bundle_meta,
    read_safetensors,
    write_safetensors,
)
from paperops.models.process import seed_everything

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
SCHEDULES = ("linear", "cosine")
__all__ = [
    "ENCODER_DIR",
    "HEAD_FILE",
    "FinetuneClassifier",
    "FinetuneConfig",
    "FinetuneModule",
    "LoraSettings",
    "apply_lora",
    "freeze_bottom",
    "layer_index",
    "layerwise_param_groups",
]

# `encoder.layer.3.` (BERT/MiniLM/RoBERTa), `layers.3.`, `h.3.` (GPT-2), `block.3.` (T5)
_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBED_RE = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|wte|wpe)\.")
_NO_DECAY_RE = re.compile(r"(?:bias|LayerNorm\.weight|layer_norm\.weight|norm\.weight)$")


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self) -> None:
        self.target_modules = [str(m) for m in self.target_modules]


@dataclass
class FinetuneConfig:
    encoder: str = "default"
    max_seq_length: int = 256
    batch_size: int = 32
    lr: float = 5e-5  # top encoder layer; lower layers get lr * layerwise_lr_decay ** depth
    head_lr: float = 1e-3
    layerwise_lr_decay: float = 0.9
    freeze_layers: int = 0  # freeze the embeddings + the bottom N layers (0: train everything)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    dropout: float = 0.1
    class_weight: str | None = "balanced"  # balanced | null
    label_smoothing: float = 0.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    schedule: str = "linear"  # decay after warmup: linear | cosine

    def __post_init__(self) -> None:
        self.encoder = str(self.encoder)
        if isinstance(self.lora, Mapping):
            self.lora = LoraSettings(**dict(self.lora))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be 'balanced' or null, got {self.class_weight!r}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        return config_from_mapping(cls, values, "finetune")


def layer_index(name: str) -> int | None:
    """The transformer layer a parameter belongs to (None: embeddings or outside the stack)."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def _is_embedding(name: str) -> bool:
    return bool(_EMBED_RE.search(name)) and layer_index(name) is None


def freeze_bottom(encoder: Encoder, n_layers: int) -> list[str]:
    """Freeze the embeddings + layers 0..n_layers-1 (n_layers=0: nothing); returns their names.

    The BERT pooler is always frozen: sentence pooling never uses it, and DDP rejects
    parameters that get no gradient.
    """
    if n_layers > encoder.num_layers:
        raise ValueError(f"freeze_layers={n_layers} but the encoder has {encoder.num_layers}")
    frozen = []
    for name, p in encoder.model.named_parameters():
        idx = layer_index(name)
        bottom = n_layers > 0 and (_is_embedding(name) or (idx is not None and idx < n_layers))
        if bottom or re.search(r"(?:^|\.)pooler\.", name):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def apply_lora(encoder: Encoder, lora: LoraSettings) -> None:
    """Wrap the transformer with PEFT LoRA adapters (base weights frozen, adapters trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    encoder.model = get_peft_model(encoder.model, config)


def merge_lora(encoder: Encoder) -> None:
    """Fold LoRA adapters into the base weights: the encoder becomes a plain transformers model."""
    if hasattr(encoder.model, "merge_and_unload"):
        encoder.model = encoder.model.merge_and_unload()


def layerwise_param_groups(
    module: nn.Module,
    *,
    num_layers: int,
    lr: float,
    head_lr: float,
    decay: float,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """AdamW groups: `head.*` -> head_lr; encoder layer i -> lr * decay ** (num_layers-1-i);
    embeddings -> lr * decay ** num_layers; other encoder parameters -> lr. Biases and norm
    weights get no weight decay. Frozen parameters are left out. Each group has a `name`."""
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            key, group_lr = "head", head_lr
        elif _is_embedding(name):
            key, group_lr = "embeddings", lr * decay**num_layers
        elif (idx := layer_index(name)) is not None:
            key, group_lr = f"layer_{idx}", lr * decay ** (num_layers - 1 - idx)
        else:
            key, group_lr = "top", lr
        no_decay = p.ndim < 2 or bool(_NO_DECAY_RE.search(name))
        group = groups.setdefault(
            (key, no_decay),
            {
                "name": key + ("_no_decay" if no_decay else ""),
                "params": [],
                "lr": group_lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(p)
    return list(groups.values())


class FinetuneModule(ClassificationModule):
    """Encoder + dropout + Linear head, trained end to end."""

    def __init__(
        self,
        encoder: Encoder,
        n_classes: int,
        config: FinetuneConfig,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(n_classes, class_weights, config.label_smoothing)
        self.encoder = encoder
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(encoder.dim, n_classes)
        self.config = config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(input_ids, attention_mask)))

    def forward_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self(batch["input_ids"], batch["attention_mask"]), batch["labels"]

    def configure_optimizers(self) -> Any:
        from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

        c = self.config
        groups = layerwise_param_groups(
            self,
            num_layers=self.encoder.num_layers,
            lr=c.lr,
            head_lr=c.head_lr,
            decay=c.layerwise_lr_decay,
            weight_decay=c.weight_decay,
        )
        optimizer = torch.optim.AdamW(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = round(c.warmup_ratio * total)
        make = (
            get_cosine_schedule_with_warmup
            if c.schedule == "cosine"
            else get_linear_schedule_with_warmup
        )
        scheduler = make(optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


class _Texts(Dataset):
    def __init__(self, texts: Sequence[str], y: np.ndarray) -> None:
        self.texts, self.y = list(texts), np.asarray(y, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], int(self.y[i])


class Collate:
    """Tokenize a batch when it is drawn: padding only to the batch's longest text."""

    def __init__(self, tokenizer: Any, max_seq_length: int, do_lower_case: bool = False) -> None:
        self.tokenizer, self.max_seq_length, self.do_lower_case = (
            tokenizer,
            max_seq_length,
            do_lower_case,
        )

    def __call__(self, batch: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        texts, ys = zip(*batch, strict=True)
        out = tokenize_texts(self.tokenizer, texts, self.max_seq_length, self.do_lower_case)
        out["labels"] = torch.tensor(ys, dtype=torch.long)
        return out


class FinetuneClassifier:
    """Fine-tuned encoder + head. `fit` trains, `logits` scores, `save`/`load` a plain bundle."""

    family = "finetune"

    def __init__(
        self, labels: Sequence[str], config: FinetuneConfig | Mapping[str, Any] | None = None
    ) -> None:
        self.labels = list(labels)
        if config is None:
            config = FinetuneConfig()
        elif not isinstance(config, FinetuneConfig):
            config = FinetuneConfig.from_dict(config)
        self.config = config
        self.module: FinetuneModule | None = None
        self.base_encoder: dict[str, Any] = {}
        self.fit_summary: dict[str, Any] = {}

    def build_module(self, class_weights: torch.Tensor | None = None) -> FinetuneModule:
        """Load the configured encoder, add LoRA / freezing, and put a fresh head on it."""
        c = self.config
        encoder = load_encoder(c.encoder, c.max_seq_length)
        self.base_encoder = {
            "spec": c.encoder,
            "resolved": str(encoder.source),
            "fingerprint": encoder.fingerprint(),
        }
        if c.lora.enabled:
            apply_lora(encoder, c.lora)
        freeze_bottom(encoder, c.freeze_layers)
        encoder.train()
        return FinetuneModule(encoder, len(self.labels), c, class_weights)

    def fit(
        self,
        train: TextSplit,
        val: TextSplit,
        *,
        trainer_cfg: Mapping[str, Any],
        loggers: list[Any],
        work_dir: Path,
        seed: int,
        callbacks: list[Any] | None = None,
    ) -> FinetuneClassifier:
        """Fine-tune on train, early-stop on val, keep the best epoch (LoRA merged afterwards)."""
        k = len(self.labels)
        check_fit_splits(train, val, k)
        c = self.config
        seed_everything(seed)
        configure_threads(trainer_cfg)
        module = self.build_module(class_weight_tensor(c.class_weight, train.y, k))
        enc = module.encoder
        collate = Collate(enc.tokenizer, enc.max_seq_length, enc.do_lower_case)
        train_loader = DataLoader(
            _Texts(train.texts, train.y), batch_size=c.batch_size, shuffle=True, collate_fn=collate
        )
        val_loader = DataLoader(
            _Texts(val.texts, val.y), batch_size=c.batch_size, shuffle=False, collate_fn=collate
        )
        n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        log.info(
            "fine-tuning %s: %d trainable of %d parameters",
            c.encoder,
            n_trainable,
            sum(p.numel() for p in module.parameters()),
        )
        summary = fit_module(
            module,
            train_loader,
            val_loader,
            trainer_cfg=trainer_cfg,
            loggers=loggers,
            callbacks=callbacks,
            ckpt_dir=Path(work_dir) / "checkpoints",
        )
        merge_lora(module.encoder)
        self.module = module.to(compute_device(trainer_cfg)).eval()
        self.fit_summary = summary | {"embed_seconds": 0.0, "trainable_params": n_trainable}
        log.info("fine-tuning done: %s", self.fit_summary)
        return self

    def to(self, device: str | torch.device) -> FinetuneClassifier:
        """Move the model (e.g. onto a GPU for evaluation)."""
        if self.module is not None:
            self.module.to(device)
        return self

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k) float32 logits aligned with `self.labels`, batched longest-first, plain torch."""
        if self.module is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        module = self.module.eval()
        device = next(module.parameters()).device
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = max(1, self.config.batch_size)
        with torch.inference_mode():
            for start in range(0, len(texts), bs):
                idx = order[start : start + bs]
                batch = module.encoder.tokenize([texts[i] for i in idx])
                batch = {key: v.to(device) for key, v in batch.items()}
                out[idx] = module(**batch).float().cpu().numpy()
        return out

    def save(self, directory: Path) -> Path:
        """encoder/ (sentence-transformers dir, safetensors) + head.safetensors + model.json."""
        if self.module is None:
            raise RuntimeError("model is not trained: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        encoder = self.module.encoder
        merge_lora(encoder)
        with atomic_dir(directory / ENCODER_DIR) as tmp:
            encoder.save(tmp)
        write_safetensors(directory / HEAD_FILE, self.module.head.state_dict())
        meta = {
            "family": self.family,
            "labels": self.labels,
            "config": asdict(self.config),
            "encoder": {
                "dir": ENCODER_DIR,
                "fingerprint": fingerprint_dir(directory / ENCODER_DIR, encoder.settings()),
                "dim": encoder.dim,
                **encoder.settings(),
                "base": self.base_encoder,
            },
            "fit_summary": self.fit_summary,
        }
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(
        cls, directory: Path, expected_labels: Sequence[str] | None = None
    ) -> FinetuneClassifier:
        """A bundle from `save` (on CPU; `.to("cuda")` to move it)."""
        directory = Path(directory)
        meta_path, head_path = directory / META_FILE, directory / HEAD_FILE
        encoder_dir = directory / ENCODER_DIR
        meta = read_bundle_meta(directory, cls.family)
        for path in (head_path, encoder_dir / "config.json"):
            if not path.is_file():
                raise ModelLoadError(f"{path} not found: retrain or restore it")
        check_label_map(meta_path, meta["labels"], expected_labels)
        try:
            config = FinetuneConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{meta_path}: bad config ({e}); retrain or restore it") from e
        labels = list(meta["labels"])
        state = read_safetensors(head_path)
        encoder = load_encoder(str(encoder_dir), meta["encoder"].get("max_seq_length"))
        saved = meta["encoder"].get("fingerprint")
        if saved != encoder.fingerprint():
            raise ModelLoadError(
                f"{meta_path}: {encoder_dir} (fingerprint {encoder.fingerprint()[:12]}) is not the "
                f"encoder this bundle was saved with (fingerprint {str(saved)[:12]}); "
                "retrain or restore it"
            )
        weight = state.get("weight")
        if weight is None or set(state) != {"weight", "bias"}:
            raise ModelLoadError(
                f"{head_path} holds {sorted(state)}, expected weight + bias; retrain or restore it"
            )
        if tuple(weight.shape) != (len(labels), encoder.dim):
            raise ModelLoadError(
                f"{head_path}: head shape {tuple(weight.shape)} does not match "
                f"{len(labels)} labels x encoder dim {encoder.dim}; retrain or restore it"
            )
        clf = cls(labels, config)
        module = FinetuneModule(encoder, len(labels), config)
        module.head.load_state_dict(state)
        clf.module = module.eval()
        clf.base_encoder = dict(meta["encoder"].get("base") or {})
        clf.fit_summary = dict(meta.get("fit_summary") or {})
        return clf
