"""What the Lightning families share: the Trainer from config, threads, seeding, class weights,
and a LightningModule base that computes the loss and the per-epoch validation metrics.

`configs/trainer/*.yaml` is the contract: `build_trainer` turns those keys into callbacks
(best checkpoint + last, early stopping, progress bar) and Trainer arguments; any other key must
be a real `lightning.Trainer` argument (e.g. `num_sanity_val_steps`), so a typo fails loudly.
`resume: true` continues from `<work_dir>/checkpoints/last.ckpt` (see `fit_module`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from paperops.models.base import META_FILE, ModelLoadError, read_meta
from paperops.models.process import set_torch_threads

log = logging.getLogger(__name__)

__all__ = [
    "ClassificationModule",
    "ResumeState",
    "balanced_class_weights",
    "build_trainer",
    "check_fit_splits",
    "class_weight_tensor",
    "compute_device",
    "configure_threads",
    "fit_module",
    "peer_wait_seconds",
    "quiet_lightning",
    "read_bundle_meta",
    "read_safetensors",
    "write_safetensors",
]

# trainer-config keys that are ours, not Trainer arguments
_OWN_KEYS = frozenset({"monitor", "mode", "patience", "num_threads", "resume", "defaults"})
LAST_CHECKPOINT = "last.ckpt"
_TRAINER_ARGS = frozenset(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
_NOISY_WARNINGS = (
    r".*does not have many workers.*",
    r".*number of training batches .* is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(trainer_cfg: Mapping[str, Any]) -> int:
    """Set torch intra-op threads from `num_threads`; returns the count in effect.

    null + several processes on CPU -> cores // devices each: two processes each using every
    core of a 2-core machine run ~10x slower than one.
    """
    n = trainer_cfg.get("num_threads")
    devices = trainer_cfg.get("devices", 1)
    on_cpu = str(trainer_cfg.get("accelerator", "auto")) == "cpu" or not torch.cuda.is_available()
    if n is None and isinstance(devices, int) and devices > 1 and on_cpu:
        n = max(1, _cpu_count() // devices)
    return set_torch_threads(n)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """sklearn's "balanced": n_samples / (n_present_classes * count); absent classes get 1."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    weights = np.ones(n_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


def class_weight_tensor(mode: str | None, y: np.ndarray, n_classes: int) -> torch.Tensor | None:
    """Loss weights for `class_weight: balanced | null`."""
    if mode is None:
        return None
    if mode != "balanced":
        raise ValueError(f"class_weight must be 'balanced' or null, got {mode!r}")
    return torch.tensor(balanced_class_weights(y, n_classes), dtype=torch.float32)


def build_trainer(
    trainer_cfg: Mapping[str, Any],
    *,
    loggers: list[Any],
    ckpt_dir: Path,
    monitor: str,
    mode: str,
    callbacks: list[Any] | None = None,
) -> L.Trainer:
    """A Trainer from a `configs/trainer` mapping: best-by-`monitor` + every epoch's last
    checkpoint in `ckpt_dir`, early stopping after `patience` epochs without improvement, TQDM
    progress."""
    if mode not in ("min", "max"):
        raise ValueError(f"trainer mode must be 'min' or 'max', got {mode!r}")
    unknown = sorted(set(trainer_cfg) - _OWN_KEYS - _TRAINER_ARGS)
    if unknown:
        raise ValueError(
            f"unknown trainer config keys {unknown}: use the keys of configs/trainer/default.yaml "
            "or lightning.Trainer arguments"
        )
    configure_threads(trainer_cfg)
    kwargs = {k: v for k, v in trainer_cfg.items() if k not in _OWN_KEYS and k in _TRAINER_ARGS}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    ckpt_dir = Path(ckpt_dir)
    cbs: list[Any] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-{epoch:03d}",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        ),
        # Lightning writes save_last only when the best improves; resume needs every epoch
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        ),
        EarlyStopping(monitor=monitor, mode=mode, patience=int(trainer_cfg.get("patience", 3))),
    ]
    if kwargs.get("enable_progress_bar", True):
        cbs.append(TQDMProgressBar())
    cbs += list(callbacks or [])  # e.g. Optuna pruning
    return L.Trainer(
        **kwargs,
        logger=list(loggers) if loggers else False,
        callbacks=cbs,
        default_root_dir=ckpt_dir.parent,
    )


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's advice that does not apply here (in-memory tensors need no workers)."""
    with warnings.catch_warnings():
        for pattern in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


class ClassificationModule(L.LightningModule):
    """Loss + metrics for a k-class classifier; subclasses give `forward_batch` and optimizers.

    Logged per epoch: train_loss, val_loss (averaged across DDP ranks with sync_dist=True),
    val_acc and val_macro_f1 (torchmetrics objects: their states are reduced across ranks
    before compute, so every rank sees the same value for early stopping and checkpointing).
    """

    def __init__(
        self, n_classes: int, class_weights: torch.Tensor | None, label_smoothing: float
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.label_smoothing = float(label_smoothing)
        weights = class_weights if class_weights is not None else torch.ones(n_classes)
        self.class_weights: torch.Tensor
        self.register_buffer("class_weights", weights.float(), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=n_classes, average="macro")
        self.seen_ranks: list[int] = []

    def forward_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of one batch."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing
        )

    def on_train_start(self) -> None:
        ranks = self.all_gather(torch.tensor([self.global_rank], device=self.device))
        self.seen_ranks = sorted(int(r) for r in torch.as_tensor(ranks).flatten().tolist())

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logits, y = self.forward_batch(batch)
        loss = self.loss(logits, y)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y)
        )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits, y = self.forward_batch(batch)
        loss = self.loss(logits, y)
        preds = logits.argmax(dim=-1)
        self.val_acc.update(preds, y)
        self.val_f1.update(preds, y)
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True)
        self.log("val_macro_f1", self.val_f1, on_step=False, on_epoch=True, prog_bar=True)


class ResumeState(Callback):
    """Puts what Lightning leaves out of a checkpoint into it, so a resumed run continues
    exactly like an uninterrupted one: the python/numpy/torch RNG states (train shuffle and
    dropout of the next epochs; also the train loader's own generator when it has one) and
    whether early stopping had already ended the run.

    Saved as tensors, lists and numbers only: checkpoints still load with weights_only=True.
    Under DDP rank 0's states are saved and restored on every rank (all ranks are seeded alike).
    """

    def __init__(self, generators: list[torch.Generator] | None = None) -> None:
        self.generators = list(generators or [])
        self.trainer: L.Trainer | None = None
        self._stopped = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        version, mt, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        return {
            "python": [version, list(mt), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": [g.get_state() for g in self.generators],
            "stopped": bool(self.trainer is not None and self.trainer.should_stop),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning calls this while restoring, before the train loader's first iterator
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        for g, g_state in zip(self.generators, state["generators"], strict=False):
            g.set_state(g_state)
        self._stopped = bool(state.get("stopped", False))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stopped:  # the fit loop checks should_stop before the next epoch
            log.info("the checkpoint's run had already stopped early: nothing left to train")
            trainer.should_stop = True


def _loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The train loader's own RNGs (e.g. `DataLoader(generator=...)`), each once."""
    found: list[torch.Generator] = []
    for g in (loader.generator, getattr(loader.sampler, "generator", None)):
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def resume_checkpoint(module: L.LightningModule, ckpt_dir: Path) -> Path | None:
    """`ckpt_dir/last.ckpt` when it exists and fits `module`; None (with a warning) when there
    is none; ValueError naming the file when it was written for another model or data."""
    last = Path(ckpt_dir) / LAST_CHECKPOINT
    if not last.is_file():
        log.warning("trainer.resume=true but %s does not exist: starting a fresh run", last)
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        saved = state["state_dict"]
    except Exception as e:
        raise ValueError(
            f"cannot resume from {last} ({type(e).__name__}: {e}); delete it or run with "
            "trainer.resume=false"
        ) from e
    expected = module.state_dict()
    problems = (
        sorted(set(expected) ^ set(saved))[:5]
        + [
            f"{k}: {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} now"
            for k, v in expected.items()
            if k in saved and tuple(saved[k].shape) != tuple(v.shape)
        ][:5]
    )
    if problems:
        raise ValueError(
            f"cannot resume from {last}: it was written for another model or data set "
            f"({'; '.join(map(str, problems))}). Delete {ckpt_dir} or run with "
            "trainer.resume=false"
        )
    if int(os.environ.get("LOCAL_RANK", "0") or 0) == 0:
        # a run killed after writing a new best checkpoint but before last.ckpt leaves one that
        # the resumed run will write again: keep only what last.ckpt knows about
        known = {last.resolve()}
        for key, cb_state in state.get("callbacks", {}).items():
            if str(key).startswith("ModelCheckpoint"):
                known |= {Path(p).resolve() for p in cb_state.get("best_k_models", {})}
        for ckpt in Path(ckpt_dir).glob("*.ckpt"):
            if ckpt.resolve() not in known:
                ckpt.unlink(missing_ok=True)
    log.info(
        "resuming from %s: epoch %d done, global step %d",
        last,
        int(state.get("epoch", -1)),
        int(state.get("global_step", -1)),
    )
    return last


def fit_module(
    module: ClassificationModule,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    trainer_cfg: Mapping[str, Any],
    loggers: list[Any],
    ckpt_dir: Path,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train with early stopping, then load the best checkpoint's weights back into `module`.

    `trainer_cfg["resume"]`: continue from `ckpt_dir/last.ckpt` (weights, optimizer, epoch,
    early-stopping and best-checkpoint state, RNG states), so the result equals an
    uninterrupted run's; otherwise the old checkpoints are deleted and training starts afresh.

    Returns the fit summary (best epoch and score, epochs run, seconds, DDP ranks). Under DDP
    every rank returns here with the same best weights (the checkpoint path is broadcast and
    written before a barrier); only rank 0 should write outputs (`summary["global_rank"]`).
    """
    monitor = str(trainer_cfg.get("monitor", "val_macro_f1"))
    mode = str(trainer_cfg.get("mode", "max"))
    ckpt_dir = Path(ckpt_dir)
    resume_from = resume_checkpoint(module, ckpt_dir) if trainer_cfg.get("resume") else None
    if (
        resume_from is None
        and int(os.environ.get("LOCAL_RANK", "0") or 0) == 0
        and ckpt_dir.is_dir()
    ):
        # a previous run's checkpoints would only take disk (and versioned names); other ranks
        # cannot have written any yet: the first checkpoint needs every rank's first epoch
        for old in ckpt_dir.glob("*.ckpt"):
            old.unlink(missing_ok=True)
    trainer = build_trainer(
        trainer_cfg,
        loggers=loggers,
        ckpt_dir=ckpt_dir,
        monitor=monitor,
        mode=mode,
        callbacks=[ResumeState(_loader_generators(train_loader)), *(callbacks or [])],
    )
    start = time.perf_counter()
    with quiet_lightning():
        trainer.fit(
            module,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
            ckpt_path=resume_from,
            weights_only=True,
        )
    train_seconds = time.perf_counter() - start
    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") or ""
    best_epoch: int | None = None
    if best_path:
        # A Lightning checkpoint is a torch pickle: weights_only=True refuses anything but
        # tensors and plain containers.
        state = torch.load(best_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        best_epoch = int(state.get("epoch", -1))
    else:
        log.warning("no best checkpoint (was %s ever logged?): keeping the last weights", monitor)
    score = getattr(ckpt_cb, "best_model_score", None)
    return {
        "best_epoch": best_epoch,
        "best_score": float(score) if score is not None else None,
        "monitor": monitor,
        "epochs_run": int(trainer.current_epoch),
        "train_seconds": round(train_seconds, 3),
        "best_checkpoint": best_path or None,
        "resumed_from": str(resume_from) if resume_from else None,
        "world_size": int(trainer.world_size),
        "global_rank": int(trainer.global_rank),
        "ranks": list(module.seen_ranks),
    }


# ---- bundle files shared by the neural families (safetensors + JSON, never pickle) ----


def write_safetensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write tensors atomically (temp file + rename): a reader never sees half a file."""
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a bundle file, or a ModelLoadError that names the file and what to do."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: retrain or restore it")
    try:
        return load_file(str(path))
    except Exception as e:
        raise ModelLoadError(
            f"{path} is corrupt ({type(e).__name__}: {e}); retrain or restore it"
        ) from e


def read_bundle_meta(directory: Path, family: str) -> dict[str, Any]:
    """model.json of a `family` bundle, with clear errors for missing/corrupt/wrong family."""

    meta_path = Path(directory) / META_FILE
    meta = read_meta(directory)
    if meta.get("family") != family:
        raise ModelLoadError(f"{meta_path} is a {meta.get('family')!r} model, not {family}")
    for key in ("labels", "config", "encoder"):
        if key not in meta:
            raise ModelLoadError(f"{meta_path} lacks {key!r}; retrain or restore it")
    return meta


def check_fit_splits(train: Any, val: Any, n_classes: int) -> None:
    """Non-empty train/val with label indices in range and at least two classes to learn."""
    for split in (train, val):
        if len(split) == 0:
            raise ValueError(f"split {split.name!r} is empty")
        if split.y.min() < 0 or split.y.max() >= n_classes:
            raise ValueError(f"split {split.name!r} has label indices outside 0..{n_classes - 1}")
    if len(np.unique(train.y)) < 2:
        raise ValueError("need at least two classes in the train split")


def peer_wait_seconds() -> float:
    """How long a non-zero local DDP rank waits for rank 0's embedding cache files.

    Under torchrun every rank starts at once; rank 0 embeds, the others wait for its files
    rather than embed the same texts on the same cores. (Lightning's own launcher starts the
    other ranks only inside `fit`, after rank 0 has written them, so there is no wait there.)
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return 3600.0 if world > 1 and local > 0 else 0.0


def compute_device(trainer_cfg: Mapping[str, Any]) -> torch.device:
    """The device for work done outside the Trainer (embedding texts) on this process."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")
