"""What both exports share: their config dataclasses, bundle fingerprints, probe texts for parity,
copying bundle files, version stamps, the parity report and the export summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paperops.config import dataclass_from_mapping
from paperops.data.datamodule import load_splits_for_model
from paperops.data.taxonomy import label_name
from paperops.data.text import model_text
from paperops.inference.onnx_classifier import (
    read_export_meta,
)
from paperops.io import atomic_write_text
from paperops.models.base import (
    CALIBRATION_FILE,
    CROSS_LISTS_DIR,
    META_FILE,
    ModelLoadError,
    read_meta,
)

EXPORTERS = ("torchscript", "dynamo")


# BERT-style FFN output MatMuls (torchscript node names and dynamo namespaces both match)
FFN_OUTPUT = r"layer\.\d+[./]output[./]dense"


FIRST_LAYERS = r"layer\.[01][./]"  # int8 there costs the last ~0.2% of agreement


FORMAT_VERSION = 1


MODEL_FILE = "model.onnx"


INT8_FILE = "model.int8.onnx"


TOKENIZER_DIR = "tokenizer"


TRAINING_FILE = "training.json"  # = paperops.train.TRAINING_FILE; serving need not import train


# what every export keeps of its bundle (neural families: the rest is the ONNX graph); the
# cross-list head directory (`models.multilabel_io`) travels as it is when the bundle has one
COPIED_FILES = (META_FILE, CALIBRATION_FILE, TRAINING_FILE, CROSS_LISTS_DIR)


class ExportError(RuntimeError):
    """The export failed: conversion error, or ONNX does not match PyTorch (`stage` says which
    model: "fp32" or "int8"; `parity` holds the figures)."""

    def __init__(self, message: str, *, stage: str = "", parity: dict[str, Any] | None = None):
        super().__init__(message)
        self.stage = stage
        self.parity = parity or {}


@dataclass
class ParityConfig:
    """How ONNX must match PyTorch (defaults = configs/export/default.yaml `parity`)."""

    split: str = "val"
    max_rows: int | None = 2000
    batch_size: int = 8  # texts per ONNX Runtime call, as served (OnnxRuntime default)
    fp32_max_abs_diff: float = 1e-4
    fp32_min_agreement: float = 0.999
    int8_max_abs_diff: float = 0.2
    int8_min_agreement: float = 0.995
    int8_max_accuracy_drop: float | None = 0.005  # vs PyTorch, on labelled parity texts

    def __post_init__(self) -> None:
        for name in ("fp32_min_agreement", "int8_min_agreement"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"export.parity.{name} must be in [0, 1]")
        if self.max_rows is not None and int(self.max_rows) < 1:
            raise ValueError("export.parity.max_rows must be >= 1 or null (all rows)")


@dataclass
class QuantizeConfig:
    """How the int8 model is made (defaults = configs/export/default.yaml `quantize`)."""

    op_types: list[str] = field(default_factory=lambda: ["MatMul"])
    exclude: list[str] = field(default_factory=lambda: [FFN_OUTPUT, FIRST_LAYERS])  # kept fp32
    smooth_alpha: float | str | None = "auto"  # SmoothQuant strength; "auto" per group; null off
    calibration_rows: int = 256  # train-split texts for the SmoothQuant statistics
    reduce_range: bool = False

    def __post_init__(self) -> None:
        self.op_types = [str(o) for o in self.op_types]
        self.exclude = [str(p) for p in self.exclude]
        for p in self.exclude:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"export.quantize.exclude: bad regex {p!r} ({e})") from e
        a = self.smooth_alpha
        if a is not None and a != "auto" and not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"export.quantize.smooth_alpha must be auto, null or in [0, 1]: {a}")


@dataclass
class ExportConfig:
    """configs/export/default.yaml as a dataclass; `from_mapping(cfg.export)`."""

    model_dir: str | None = None
    output_dir: str | None = None
    report: str | None = None
    opset: int = 18
    exporter: str = "torchscript"
    int8: bool = True
    per_channel: bool = True
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)

    def __post_init__(self) -> None:
        if isinstance(self.quantize, Mapping):
            self.quantize = dataclass_from_mapping(QuantizeConfig, self.quantize, "export.quantize")
        if isinstance(self.parity, Mapping):
            self.parity = dataclass_from_mapping(ParityConfig, self.parity, "export.parity")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"export.exporter must be one of {EXPORTERS}, got {self.exporter!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ExportConfig:
        """From `cfg.export` (a DictConfig or dict); unknown keys fail with their names."""
        if values is not None and not isinstance(values, dict):
            from omegaconf import OmegaConf

            values = OmegaConf.to_container(values, resolve=True)  # type: ignore[assignment]
        # `export.lm` is the language model's own section (paperops.export.lm)
        values = {k: v for k, v in (values or {}).items() if k != "lm"}
        return dataclass_from_mapping(cls, values, "export")


@dataclass
class ExportResult:
    out_dir: Path
    runtime: str  # "onnx" | "sklearn"
    family: str
    files: dict[str, str | None]
    parity: dict[str, Any]
    seconds: float
    meta: dict[str, Any]


def bundle_fingerprint(bundle_dir: Path) -> str:
    """sha256 over every file of a bundle (relative path + bytes).

    Weights, label map, encoder identity (model.json) and calibration all decide what an export
    serves, so any change to any of them makes a new fingerprint and `ensure_export` re-exports.
    """
    bundle_dir = Path(bundle_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        h.update(path.relative_to(bundle_dir).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def is_valid_export(out_dir: Path, fingerprint: str) -> bool:
    """True when `out_dir` holds a complete export of the bundle with this fingerprint."""
    out_dir = Path(out_dir)
    try:
        meta = read_export_meta(out_dir)
        read_meta(out_dir)
    except ModelLoadError:
        return False
    if meta.get("format_version") != FORMAT_VERSION:
        return False
    if (meta.get("source") or {}).get("fingerprint") != fingerprint:
        return False
    return all((out_dir / f).is_file() for f in (meta.get("files") or {}).values() if f)


_PROBE_SENTENCES = (
    "We study {name}.",
    "A new method in {name}: theory, experiments and open problems.",
    "Recent results in {name}. We prove bounds, run simulations on large data sets and compare "
    "our measurements with previous observations, finding agreement within the uncertainties.",
)


def probe_texts(labels: Sequence[str], n_repeat: int = 6) -> list[str]:
    """Deterministic paper-like texts for a parity check without data (`ensure_export` on a
    serving host): a few sentences about each label, short to longer than 128 tokens.

    They check that graph and tokenizer reproduce PyTorch; they are not a quality measurement.
    """

    out = []
    for label in labels:
        name = label_name(label)
        for i, s in enumerate(_PROBE_SENTENCES):
            abstract = " ".join([s.format(name=name)] * (1 + i * n_repeat))
            out.append(model_text(f"On {name}", abstract))
    return out


def _split_texts(
    processed_dir: Path, split: str, max_rows: int | None, seed: int
) -> tuple[list[str], list[str]]:
    """Model texts and label strings of a (stratified, seeded) sample of a processed split."""

    splits, _ = load_splits_for_model(
        processed_dir, (split,), max_rows={split: max_rows}, seed=seed
    )
    return splits[split].texts, [str(v) for v in splits[split].frame["label"]]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "paperops",
        "torch",
        "transformers",
        "tokenizers",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "scikit-learn",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _copy_bundle_files(bundle_dir: Path, dst: Path, everything: bool) -> list[str]:
    copied = []
    for path in sorted(bundle_dir.iterdir()):
        if not everything and path.name not in COPIED_FILES:
            continue
        if path.is_dir():
            shutil.copytree(path, dst / path.name)
        else:
            shutil.copy2(path, dst / path.name)
        copied.append(path.name)
    return copied


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """The ORT quantizer logs a line per tensor (and a pre-processing hint) on the root logger:
    noise for this graph, hidden while it runs."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _check(parity: dict[str, Any], out_dir: Path) -> None:
    for name in ("fp32", "sklearn", "int8"):
        p = parity.get(name)
        if isinstance(p, Mapping) and not p["passed"]:
            raise ExportError(
                f"{name} export does not match PyTorch on {p['n']} texts (nothing written to "
                f"{out_dir}):\n{parity_table(parity)}\n"
                + (
                    "the int8 model is the likely culprit: export without it (--no-int8 / "
                    "export.int8=false) or keep more nodes in fp32 (export.quantize.exclude)"
                    if name == "int8"
                    else "the ONNX graph computes something else than PyTorch: try "
                    "export.exporter=dynamo, or report it"
                ),
                stage=name,
                parity=parity,
            )


def write_parity_report(result: ExportResult, path: Path) -> Path:
    """A small metrics JSON (DVC `metrics`): parity figures and export time."""
    out: dict[str, Any] = {"runtime": result.runtime, "family": result.family}
    for name in ("fp32", "int8", "sklearn"):
        p = result.parity.get(name)
        if isinstance(p, Mapping):
            out[name] = {
                k: p[k]
                for k in (
                    "n",
                    "max_abs_diff",
                    "mean_max_abs_diff",
                    "agreement",
                    "disagreements",
                    "agreement_confident",
                    "accuracy",
                    "torch_accuracy",
                    "passed",
                )
                if k in p
            }
    out["export_seconds"] = round(result.seconds, 2)
    atomic_write_text(Path(path), json.dumps(out, indent=2) + "\n")
    return Path(path)


def export_summary(result: ExportResult) -> dict[str, Any]:
    """JSON-able view of an ExportResult."""
    d = asdict(result)
    d["out_dir"] = str(result.out_dir)
    return d


def parity_table(parity: Mapping[str, Any]) -> str:
    """The parity figures as a small text table (CLI output, error messages)."""
    head = f"{'model':7s} {'n':>5s} {'max|dp|':>9s} {'limit':>8s} {'top-1':>7s} {'limit':>6s}"
    rows = [head + f" {'conf.':>7s} {'acc':>7s} {'torch':>7s}"]
    for name in ("fp32", "int8", "sklearn"):
        p = parity.get(name)
        if not isinstance(p, Mapping):
            continue
        acc = f"{p['accuracy']:7.4f} {p['torch_accuracy']:7.4f}" if "accuracy" in p else " " * 15
        rows.append(
            f"{name:7s} {p['n']:5d} {p['max_abs_diff']:9.2e} {p['limit_max_abs_diff']:8.2e} "
            f"{p['agreement']:7.4f} {p['limit_min_agreement']:6.3f} "
            f"{p.get('agreement_confident', 1.0):7.4f} {acc}  " + ("ok" if p["passed"] else "FAIL")
        )
    return "\n".join(rows)
