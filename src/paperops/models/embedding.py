"""Frozen sentence encoder + a trained head (linear or MLP).

The encoder runs once per text: embeddings are cached on disk (safetensors) keyed by encoder
fingerprint + texts hash, so re-runs, sweeps and DDP ranks only train the head, which takes
seconds. The bundle stores the head (`head.safetensors`) and the encoder's identity
(`model.json`: spec, resolved directory, fingerprint, dim); loading re-resolves the encoder on
this machine and refuses one whose fingerprint differs from the one the head was trained on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from paperops.config import dataclass_from_mapping
from paperops.data.datamodule import TextSplit
from paperops.io import atomic_write_text
from paperops.models.base import META_FILE, ModelLoadError, check_label_map
from paperops.models.embedding_cache import EmbeddingCache
from paperops.models.encoder import (
    Encoder,
    EncoderNotFoundError,
    embed,
    load_encoder,
)
from paperops.models.lightning import (
    ClassificationModule,
    check_fit_splits,
    class_weight_tensor,
    compute_device,
    configure_threads,
    fit_module,
    peer_wait_seconds,
    read_bundle_meta,
    read_safetensors,
    write_safetensors,
)
from paperops.models.onnx_text import (
    ENCODER_DIR,
    OnnxEncoder,
    copy_encoder_graph,
    load_encoder_graph,
)
from paperops.models.process import seed_everything

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
HEADS = ("linear", "mlp")
BACKENDS = ("torch", "onnx-int8")
__all__ = ["HEAD_FILE", "EmbeddingClassifier", "EmbeddingConfig", "build_head"]


def config_from_mapping(cls: type, values: Mapping[str, Any], family: str) -> Any:
    """A config dataclass from a Hydra/JSON mapping; `family` is accepted, unknown keys fail."""
    values = dict(values)
    got = values.pop("family", family)
    if got != family:
        raise ValueError(f"config is for family {got!r}, not {family!r}")
    return dataclass_from_mapping(cls, values, f"{family} config")


@dataclass
class EmbeddingConfig:
    encoder: str = "default"
    max_seq_length: int = 256
    embed_batch_size: int = 64
    cache_dir: str | None = None  # None: <work_dir>/embedding_cache during fit, none after load
    # torch: the encoder in PyTorch fp32 (~52 abstracts/s on 2 cores); onnx-int8: its int8 ONNX
    # graph (~3x faster, built by `paperops train` under graph_dir and kept in the bundle)
    embed_backend: str = "torch"
    graph_dir: str | None = None
    head: str = "mlp"  # linear | mlp
    hidden_dim: int = 512
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    class_weight: str | None = "balanced"  # balanced | null
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        self.encoder = str(self.encoder)
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)
        if self.embed_backend not in BACKENDS:
            raise ValueError(f"embed_backend must be one of {BACKENDS}, got {self.embed_backend!r}")
        if self.graph_dir is not None:
            self.graph_dir = str(self.graph_dir)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be 'balanced' or null, got {self.class_weight!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EmbeddingConfig:
        return config_from_mapping(cls, values, "embedding")


def build_head(kind: str, dim: int, n_classes: int, hidden_dim: int, dropout: float) -> nn.Module:
    """`linear`: one Linear; `mlp`: Linear-GELU-Dropout-Linear."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(dim, n_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, n_classes),
        )
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")


class HeadModule(ClassificationModule):
    """The head trained on cached embeddings with AdamW."""

    def __init__(
        self,
        head: nn.Module,
        n_classes: int,
        *,
        lr: float,
        weight_decay: float,
        class_weights: torch.Tensor | None,
        label_smoothing: float,
    ) -> None:
        super().__init__(n_classes, class_weights, label_smoothing)
        self.head = head
        self.lr, self.weight_decay = lr, weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return self.head(x), y

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def encoder_identity(spec: str, encoder: Encoder) -> dict[str, Any]:
    """What model.json records about the encoder: enough to find it and to check it is the same."""
    return {
        "spec": spec,
        "resolved": str(encoder.source),
        "fingerprint": encoder.fingerprint(),
        "dim": encoder.dim,
        **encoder.settings(),
    }


class EmbeddingClassifier:
    """Frozen encoder + head. `fit` trains, `logits` scores, `save`/`load` round-trip a bundle."""

    family = "embedding"
    # Batches smaller than this are embedded directly: caching them would litter the cache with
    # one file per request or per behavioural-test batch, for texts that embed in milliseconds.
    cache_min_texts = 256

    def __init__(
        self, labels: Sequence[str], config: EmbeddingConfig | Mapping[str, Any] | None = None
    ) -> None:
        self.labels = list(labels)
        if config is None:
            config = EmbeddingConfig()
        elif not isinstance(config, EmbeddingConfig):
            config = EmbeddingConfig.from_dict(config)
        self.config = config
        self.encoder: Encoder | None = None
        self.onnx_encoder: OnnxEncoder | None = None  # embed_backend onnx-int8
        self.head: nn.Module | None = None
        self.cache_dir: Path | None = Path(config.cache_dir) if config.cache_dir else None
        self.fit_summary: dict[str, Any] = {}

    @property
    def needs_encoder_graph(self) -> bool:
        """`paperops train` builds the int8 graph first, then calls attach_encoder()."""
        return self.config.embed_backend == "onnx-int8"

    def attach_encoder(self, graph_dir: Path) -> None:
        self.onnx_encoder = OnnxEncoder(Path(graph_dir))

    def _embedder(self) -> Any:
        """What computes embeddings: the int8 graph, else the torch encoder."""
        if self.onnx_encoder is not None:
            return self.onnx_encoder
        if self.needs_encoder_graph:
            raise RuntimeError("embed_backend is onnx-int8 but no graph: attach_encoder(dir)")
        if self.encoder is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        return self.encoder

    @property
    def dim(self) -> int:
        return int(self._embedder().dim)

    # ---- training ----

    def _cache(self) -> EmbeddingCache | None:
        return EmbeddingCache(self.cache_dir) if self.cache_dir is not None else None

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
    ) -> EmbeddingClassifier:
        """Embed train/val (through the cache), train the head, keep the best epoch's weights."""
        k = len(self.labels)
        check_fit_splits(train, val, k)
        c = self.config
        work_dir = Path(work_dir)
        seed_everything(seed)
        configure_threads(trainer_cfg)
        if self.cache_dir is None:
            self.cache_dir = work_dir / "embedding_cache"
        if not self.needs_encoder_graph:
            self.encoder = load_encoder(c.encoder, c.max_seq_length)
            self.encoder.to(compute_device(trainer_cfg))
        embedder = self._embedder()
        cache = EmbeddingCache(self.cache_dir)
        start = time.perf_counter()
        progress = bool(trainer_cfg.get("enable_progress_bar", True))
        wait = peer_wait_seconds()
        x_train = cache.get_or_compute(
            embedder, train.texts, c.embed_batch_size, progress=progress, wait_s=wait
        )
        x_val = cache.get_or_compute(
            embedder, val.texts, c.embed_batch_size, progress=progress, wait_s=wait
        )
        embed_seconds = time.perf_counter() - start

        seed_everything(seed)  # the head's init must not depend on whether the cache was hit
        head = build_head(c.head, embedder.dim, k, c.hidden_dim, c.dropout)
        module = HeadModule(
            head,
            k,
            lr=c.lr,
            weight_decay=c.weight_decay,
            class_weights=class_weight_tensor(c.class_weight, train.y, k),
            label_smoothing=c.label_smoothing,
        )

        def loader(x: np.ndarray, y: np.ndarray, shuffle: bool) -> DataLoader:
            ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64)))
            return DataLoader(ds, batch_size=c.batch_size, shuffle=shuffle)

        summary = fit_module(
            module,
            loader(x_train, train.y, True),
            loader(x_val, val.y, False),
            trainer_cfg=trainer_cfg,
            loggers=loggers,
            callbacks=callbacks,
            ckpt_dir=work_dir / "checkpoints",
        )
        self.head = module.head.cpu().eval()
        self.fit_summary = summary | {"embed_seconds": round(embed_seconds, 3)}
        log.info("embedding head trained: %s", self.fit_summary)
        return self

    # ---- inference ----

    def to(self, device: str | torch.device) -> EmbeddingClassifier:
        """Move the encoder (the expensive part) to `device`; the head stays on the CPU."""
        if self.encoder is not None:
            self.encoder.to(device)
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) embeddings: through the cache when this instance has a cache_dir (and the
        batch has at least `cache_min_texts` texts)."""
        embedder = self._embedder()
        cache = self._cache()
        progress = len(texts) >= 1000
        if cache is not None and len(texts) >= self.cache_min_texts:
            return cache.get_or_compute(
                embedder, texts, self.config.embed_batch_size, progress=progress
            )
        if self.onnx_encoder is not None:
            return self.onnx_encoder.embed_texts(texts)
        return embed(self.encoder, texts, self.config.embed_batch_size, progress=progress)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k) float32 logits aligned with `self.labels` (plain torch: no Trainer)."""
        if self.head is None:
            raise RuntimeError("model is not trained: call fit() or load()")
        x = torch.from_numpy(self.embed(list(texts)))
        self.head.eval()
        with torch.inference_mode():
            parts = [self.head(x[i : i + 8192]) for i in range(0, len(x), 8192)]
        if not parts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return torch.cat(parts).float().numpy()

    # ---- bundle ----

    def save(self, directory: Path) -> Path:
        """head.safetensors + model.json (labels, config, encoder identity, fit summary)."""
        if self.head is None or (self.encoder is None and self.onnx_encoder is None):
            raise RuntimeError("model is not trained: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_safetensors(directory / HEAD_FILE, self.head.state_dict())
        if self.onnx_encoder is not None:
            identity = copy_encoder_graph(self.onnx_encoder, directory / ENCODER_DIR)
        else:
            identity = encoder_identity(self.config.encoder, self._embedder())
        meta = {
            "family": self.family,
            "labels": self.labels,
            "config": asdict(self.config),
            "encoder": identity,
            "fit_summary": self.fit_summary,
        }
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(
        cls,
        directory: Path,
        expected_labels: Sequence[str] | None = None,
        *,
        cache_dir: Path | None = None,
    ) -> EmbeddingClassifier:
        """A bundle from `save`. The embedding cache is `cache_dir`, else the one it was trained
        with when that directory exists here; calls of fewer than `cache_min_texts` texts (a
        request) never write to it, so serving does not grow it."""
        directory = Path(directory)
        meta_path, head_path = directory / META_FILE, directory / HEAD_FILE
        meta = read_bundle_meta(directory, cls.family)
        if not head_path.is_file():
            raise ModelLoadError(f"{head_path} not found: retrain or restore it")
        check_label_map(meta_path, meta["labels"], expected_labels)
        try:
            config = EmbeddingConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{meta_path}: bad config ({e}); retrain or restore it") from e
        state = read_safetensors(head_path)
        labels = list(meta["labels"])
        clf = cls(labels, config)
        if config.embed_backend == "onnx-int8":
            clf.onnx_encoder = load_encoder_graph(directory / ENCODER_DIR, meta["encoder"])
        else:
            clf.encoder = load_bundle_encoder(meta_path, meta["encoder"], config.max_seq_length)
        dim = clf.dim
        head = build_head(config.head, dim, len(labels), config.hidden_dim, config.dropout)
        check_head_shapes(head_path, head, state, len(labels), dim)
        head.load_state_dict(state)
        clf.head = head.eval()
        trained_cache = Path(config.cache_dir) if config.cache_dir else None
        if cache_dir is not None:
            clf.cache_dir = Path(cache_dir)
        elif trained_cache is not None and trained_cache.is_dir():
            clf.cache_dir = trained_cache
        else:
            clf.cache_dir = None
        clf.fit_summary = dict(meta.get("fit_summary") or {})
        return clf


def load_bundle_encoder(
    meta_path: Path, identity: Mapping[str, Any], max_seq_length: int
) -> Encoder:
    """The encoder a head was trained on, found on this machine and checked by fingerprint."""
    spec, resolved = str(identity.get("spec")), identity.get("resolved")
    try:
        encoder = load_encoder(spec, max_seq_length)
    except EncoderNotFoundError as e:
        if resolved and Path(resolved).is_dir():
            encoder = load_encoder(resolved, max_seq_length)
        else:
            raise ModelLoadError(
                f"{meta_path}: the head was trained on encoder {spec!r} ({resolved}), which is "
                f"not available here: {e}"
            ) from e
    saved = identity.get("fingerprint")
    if saved != encoder.fingerprint():
        raise ModelLoadError(
            f"{meta_path}: encoder mismatch: the head was trained on {spec!r} at {resolved} "
            f"(fingerprint {str(saved)[:12]}), but {spec!r} here is {encoder.source} "
            f"(fingerprint {encoder.fingerprint()[:12]}); install or restore the original "
            "encoder, or retrain"
        )
    return encoder


def check_head_shapes(
    path: Path, head: nn.Module, state: Mapping[str, torch.Tensor], n_labels: int, dim: int
) -> None:
    """A head file must fit the label map and the encoder width before load_state_dict."""
    expected = head.state_dict()
    names = list(expected)
    if set(state) != set(expected):
        raise ModelLoadError(
            f"{path} holds tensors {sorted(state)} but the configured head needs "
            f"{sorted(expected)}; retrain or restore it"
        )
    first, last = state[names[0]], state[names[-1]]
    if first.ndim == 2 and first.shape[1] != dim:
        raise ModelLoadError(
            f"{path}: head input width {first.shape[1]} does not match the encoder's {dim}; "
            "retrain or restore it"
        )
    if last.shape[0] != n_labels:
        raise ModelLoadError(
            f"{path}: head has {last.shape[0]} outputs but the label map has {n_labels} labels; "
            "retrain or restore it"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ModelLoadError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, expected "
                f"{tuple(expected[name].shape)}; retrain or restore it"
            )
