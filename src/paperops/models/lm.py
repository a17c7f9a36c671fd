"""The causal language model family: GPT-2 architecture, trained as a LightningModule.

`model.pretrained` (e.g. `distilgpt2` in the local HF cache, or any local directory) fine-tunes
those weights, loaded with `local_files_only`; without it the model is built from a small config
and trained from scratch with a byte-level BPE tokenizer trained on the training split.

Documents are packed GPT-2 style: each text is followed by `<|endoftext|>`, the stream is cut
into `context_length` blocks, and a prompt at generation time starts after an `<|endoftext|>`,
as every document did in training. Perplexity is exp(mean next-token loss) over held-out blocks.

A bundle is a `save_pretrained` directory (config.json + model.safetensors, tied input/output
embeddings stored once) plus `tokenizer.json` and `model.json`. Loading refuses a checkpoint
with missing or unexpected weights instead of silently re-initialising them (the first report
lost its trained head that way).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from paperops.io import atomic_write_text
from paperops.models.base import LM_FAMILY, META_FILE, ModelLoadError, read_meta
from paperops.models.lightning import configure_threads, fit_module
from paperops.models.lm_module import LMConfig, LMModule, _pad_blocks, _sum_token_loss, pack_blocks
from paperops.models.process import seed_everything

log = logging.getLogger(__name__)

FAMILY = LM_FAMILY
FORMAT = 1
EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
__all__ = [
    "EOS",
    "CausalLM",
    "LMConfig",
    "LMModule",
    "load_lm",
    "make_tiny_lm",
    "pack_blocks",
    "train_tokenizer",
]


# ---- tokenizer ----------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """Byte-level BPE (GPT-2's scheme) trained on `texts`; `<|endoftext|>` is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _load_tokenizer_file(path: Path) -> Any:
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the LM bundle has no tokenizer; retrain it")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} is corrupt ({e}); retrain or restore the bundle") from e


def pretrained_tokenizer(spec: str) -> Any:
    """The fast tokenizer of a local HF model dir/name (local files only) or a tokenizer.json."""
    p = Path(spec)
    if p.is_file():
        return _load_tokenizer_file(p)
    if (p / TOKENIZER_FILE).is_file():
        return _load_tokenizer_file(p / TOKENIZER_FILE)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec, local_files_only=True).backend_tokenizer  # nosec B615 # local files only
    except OSError as e:
        raise ModelLoadError(
            f"tokenizer {spec!r} is not available locally ({e}); give a local path, "
            "or set model.pretrained=null to train a BPE tokenizer"
        ) from e


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.token_to_id(EOS)
    if eos is None:
        raise ModelLoadError(f"the tokenizer has no {EOS!r} token (GPT-2's end-of-text)")
    return int(eos)


# ---- the bundle ---------------------------------------------------------------------------------


class CausalLM:
    """A GPT-2 model + its tokenizer + what serving needs to know (eos id, context length)."""

    family = FAMILY

    def __init__(self, model: Any, tokenizer: Any, meta: Mapping[str, Any]) -> None:
        model.loss_type = "ForCausalLM"  # GPT-2 configs name none; transformers warns per call
        self.model = model
        self.tokenizer = tokenizer
        self.meta = dict(meta)
        self.eos_token_id = _eos_id(tokenizer)
        self.context_length = int(model.config.n_positions)
        self.vocab_size = int(model.config.vocab_size)

    @property
    def params(self) -> int:
        """Trainable parameters, tied embeddings counted once."""
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids a generation starts from: `<|endoftext|>` + prompt, like a document."""
        return [self.eos_token_id, *self.encode(prompt)]

    @classmethod
    def from_config(cls, config: LMConfig, tokenizer: Any) -> CausalLM:
        """A fresh model (from scratch), or the `pretrained` weights to fine-tune."""
        from transformers import GPT2Config, GPT2LMHeadModel

        if config.pretrained:
            model = _from_pretrained(config.pretrained, what="model.pretrained")
            if model.config.vocab_size < tokenizer.get_vocab_size():
                raise ValueError(
                    f"model.pretrained={config.pretrained!r} has {model.config.vocab_size} "
                    f"embeddings but the tokenizer has {tokenizer.get_vocab_size()} tokens; "
                    "use the pretrained model's own tokenizer (model.tokenizer=null)"
                )
        else:
            eos = _eos_id(tokenizer)
            gcfg = GPT2Config(
                vocab_size=tokenizer.get_vocab_size(),
                n_positions=config.context_length,
                n_embd=config.n_embd,
                n_layer=config.n_layer,
                n_head=config.n_head,
                resid_pdrop=config.dropout,
                embd_pdrop=config.dropout,
                attn_pdrop=config.dropout,
                bos_token_id=eos,
                eos_token_id=eos,
                pad_token_id=eos,
                tie_word_embeddings=True,
            )
            model = GPT2LMHeadModel(gcfg)
        meta = {"pretrained": config.pretrained, "config": asdict(config)}
        return cls(model, tokenizer, meta)

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _quiet_transformers()
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        meta = {
            **self.meta,
            "family": FAMILY,
            "format": FORMAT,
            "context_length": self.context_length,
            "eos_token_id": self.eos_token_id,
            "vocab_size": self.vocab_size,
            "params": self.params,
            "labels": [],  # the classifier bundle contract; an LM has none
        }
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")
        return directory

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu") -> CausalLM:
        directory = Path(directory)
        meta = read_meta(directory)
        if meta.get("family") != FAMILY:
            raise ModelLoadError(
                f"{directory / META_FILE} is a {meta.get('family')!r} model, not a language model"
            )
        tokenizer = _load_tokenizer_file(directory / TOKENIZER_FILE)
        if not (directory / WEIGHTS_FILE).is_file():
            raise ModelLoadError(f"{directory / WEIGHTS_FILE} not found: retrain or restore it")
        model = _from_pretrained(str(directory), what=str(directory))
        model.to(device).eval()
        lm = cls(model, tokenizer, meta)
        if lm.vocab_size < tokenizer.get_vocab_size():
            raise ModelLoadError(
                f"{directory}: the model has {lm.vocab_size} embeddings but tokenizer.json has "
                f"{tokenizer.get_vocab_size()} tokens; the files come from different models"
            )
        return lm

    # ---- evaluation ----

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str], batch_size: int = 32) -> dict[str, float]:
        """Held-out next-token loss over packed blocks (the training objective), and exp of it."""
        blocks = pack_blocks(
            [self.encode(t) for t in texts],
            self.eos_token_id,
            self.context_length,
            keep_tail=True,
        )
        if not blocks:
            raise ValueError("no text to evaluate the language model on")
        self.model.eval()
        device = next(self.model.parameters()).device
        total, n = 0.0, 0
        for i in range(0, len(blocks), batch_size):
            ids, mask = _pad_blocks(blocks[i : i + batch_size], self.eos_token_id)
            s, k = _sum_token_loss(self.model, ids.to(device), mask.to(device))
            total, n = total + float(s), n + int(k)
        loss = total / max(n, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(n)}

    # ---- training ----

    def fit(
        self,
        train_texts: Sequence[str],
        val_texts: Sequence[str],
        *,
        trainer_cfg: Mapping[str, Any],
        loggers: list[Any],
        work_dir: Path,
        seed: int,
        callbacks: list[Any] | None = None,
    ) -> dict[str, Any]:
        """Train with the Lightning Trainer (early stopping on val_loss), keep the best weights."""
        c = LMConfig.from_dict(self.meta["config"])
        seed_everything(seed)
        configure_threads(trainer_cfg)
        train_blocks = pack_blocks(
            [self.encode(t) for t in train_texts], self.eos_token_id, self.context_length
        )
        val_blocks = pack_blocks(
            [self.encode(t) for t in val_texts],
            self.eos_token_id,
            self.context_length,
            keep_tail=True,
        )
        if not train_blocks or not val_blocks:
            raise ValueError(
                f"too little text: {len(train_blocks)} train and {len(val_blocks)} val blocks of "
                f"{self.context_length} tokens"
            )
        gen = torch.Generator().manual_seed(seed)
        train_loader = DataLoader(
            TensorDataset(torch.tensor(np.array(train_blocks), dtype=torch.long)),
            batch_size=c.batch_size,
            shuffle=True,
            generator=gen,
            drop_last=len(train_blocks) > c.batch_size,
        )
        val_ids, val_mask = _pad_blocks(val_blocks, self.eos_token_id)
        val_loader = DataLoader(TensorDataset(val_ids, val_mask), batch_size=c.eval_batch_size)
        self.model.train()
        module = LMModule(self.model, c)
        summary = fit_module(
            module,
            train_loader,
            val_loader,
            trainer_cfg={**dict(trainer_cfg), "monitor": "val_loss", "mode": "min"},
            loggers=loggers,
            ckpt_dir=Path(work_dir) / "checkpoints",
            callbacks=callbacks,
        )
        self.model = module.model.to("cpu").eval()
        tokens = len(train_blocks) * self.context_length
        summary.update(
            train_blocks=len(train_blocks),
            val_blocks=len(val_blocks),
            train_tokens_per_epoch=tokens,
            tokens_per_s=round(
                tokens * (summary["epochs_run"] + 1) / max(summary["train_seconds"], 1e-9), 1
            ),
        )
        return summary


def _quiet_transformers() -> None:
    """No per-file progress bars from transformers: a bundle loads in milliseconds."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _from_pretrained(spec: str, *, what: str) -> Any:
    """GPT2LMHeadModel from local files only; missing or unexpected weights are an error."""
    from transformers import GPT2LMHeadModel

    _quiet_transformers()

    try:
        model, info = GPT2LMHeadModel.from_pretrained(  # nosec B615 # local_files_only=True below
            spec, local_files_only=True, output_loading_info=True
        )
    except OSError as e:
        raise ModelLoadError(
            f"{what}: cannot load GPT-2 weights from {spec!r} with local files only ({e}); "
            "give a directory with config.json + model.safetensors, or train from scratch "
            "(model.pretrained=null)"
        ) from e
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    problems.update({"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise ModelLoadError(
            f"{what}: the checkpoint does not match the GPT-2 config ({detail}); "
            "its weights would be silently re-initialised, so it is refused"
        )
    return model


def load_lm(directory: Path, *, device: str = "cpu") -> CausalLM:
    return CausalLM.load(Path(directory), device=device)


# ---- data ---------------------------------------------------------------------------------------


# ---- for tests ----------------------------------------------------------------------------------


def make_tiny_lm(
    directory: Path,
    texts: Sequence[str],
    *,
    seed: int = 0,
    vocab_size: int = 300,
    context_length: int = 64,
    train_steps: int = 0,
) -> Path:
    """A 2-layer, 32-dim GPT-2 bundle with a BPE trained on `texts` (tests build their own)."""
    torch.manual_seed(seed)
    tok = train_tokenizer(texts, vocab_size=vocab_size, min_frequency=1)
    cfg = LMConfig(
        vocab_size=vocab_size,
        n_layer=2,
        n_embd=32,
        n_head=2,
        context_length=context_length,
        dropout=0.0,
        lr=3e-3,
        warmup_steps=1,
    )
    lm = CausalLM.from_config(cfg, tok)
    if train_steps:
        blocks = pack_blocks([lm.encode(t) for t in texts], lm.eos_token_id, context_length)
        data = torch.tensor(np.array(blocks), dtype=torch.long)
        opt = torch.optim.AdamW(lm.model.parameters(), lr=cfg.lr)
        lm.model.train()
        for step in range(train_steps):
            batch = data[torch.randint(len(data), (min(8, len(data)),))]
            loss = lm.model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == train_steps - 1:
                log.debug("tiny LM loss after %d steps: %.3f", train_steps, loss.item())
        lm.model.eval()
    lm.meta["corpus"] = "tiny"
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    return lm.save(directory)
