"""The sentence encoder alone as an int8 ONNX graph: how the hybrid family embeds every paper.

PyTorch fp32 embeds ~52 abstracts/s on 2 cores (128 tokens), so the ~120k papers of the full
benchmark took ~40 min; this graph is the classifier export's recipe (torchscript exporter,
eager attention, SmoothQuant + dynamic per-channel int8, FFN outputs and first layers in fp32)
applied to the encoder and its pooling, without a head. The hybrid family trains and serves on
the same graph, so its features are identical in both places and serving needs no torch.

Built once per (encoder fingerprint, max_seq_length, quantization settings) under a cache root,
atomically, and only kept when the int8 embeddings agree with PyTorch's (mean cosine >= 0.99, min
>= 0.95 on the calibration texts); otherwise `ExportError` and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from paperops.export.common import ExportConfig, ExportError
from paperops.export.graph import export_text_graph, save_tokenizer
from paperops.export.quantize import _quantize
from paperops.io import atomic_dir, atomic_write_text
from paperops.models.encoder import embed, load_encoder
from paperops.models.onnx_session import open_session
from paperops.models.onnx_text import (
    ENCODER_META,
    ENCODER_OUTPUT,
    OnnxEncoder,
    OnnxTextGraph,
    load_tokenizer,
)
from paperops.models.process import torch_threads

log = logging.getLogger(__name__)

GRAPH_FILE, FP32_FILE, TOKENIZER_DIR = "encoder.int8.onnx", "encoder.onnx", "tokenizer"
MIN_MEAN_COSINE, MIN_COSINE = 0.99, 0.95
__all__ = ["ensure_encoder_graph"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def ensure_encoder_graph(
    spec: str,
    max_seq_length: int,
    cache_root: Path,
    calib_texts: Sequence[str],
    *,
    threads: int | None = None,
    cfg: ExportConfig | None = None,
) -> Path:
    """The directory of `spec`'s int8 graph under `cache_root`, building it when missing.

    `calib_texts` feed SmoothQuant's statistics and the agreement check (first 256 used); they
    are recorded by count only: a later call with other texts reuses the graph.
    """
    cfg = cfg or ExportConfig()
    encoder = load_encoder(spec, max_seq_length)
    key_src = json.dumps(
        {"encoder": encoder.fingerprint(), "quantize": asdict(cfg.quantize), "opset": cfg.opset},
        sort_keys=True,
    )
    out = Path(cache_root) / hashlib.sha256(key_src.encode()).hexdigest()[:20]
    if (out / ENCODER_META).is_file():
        return out
    texts = [t for t in calib_texts if t][: cfg.quantize.calibration_rows]
    if len(texts) < 8:
        raise ExportError(
            f"need at least 8 calibration texts to build the int8 encoder, got {len(texts)}"
        )
    t0 = time.perf_counter()
    log.info("building the int8 ONNX encoder of %s (%d tokens) -> %s", spec, max_seq_length, out)
    with atomic_dir(out) as tmp, torch_threads(threads):
        encoder.eval()
        try:
            export_text_graph(
                encoder, encoder, tmp / FP32_FILE, cfg.opset, cfg.exporter, ENCODER_OUTPUT
            )
        except Exception as e:
            raise ExportError(
                f"torch.onnx could not export the encoder {spec}: {type(e).__name__}: {e}",
                stage="fp32",
            ) from e
        tok = save_tokenizer(encoder, tmp / TOKENIZER_DIR)
        tokenizer, pad_id, lower = load_tokenizer(tmp / TOKENIZER_DIR / "tokenizer.json", tok, "")
        fp32 = OnnxTextGraph(
            open_session(tmp / FP32_FILE, threads, "re-run"),
            tokenizer,
            output=ENCODER_OUTPUT,
            do_lower_case=lower,
            pad_id=pad_id,
        )
        work = tmp / ".work"
        work.mkdir()
        try:
            quant = _quantize(tmp / FP32_FILE, tmp / GRAPH_FILE, fp32, texts, cfg, threads, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (tmp / FP32_FILE).unlink()  # only the int8 graph is used; 90 MB less on disk
        meta: dict[str, Any] = {
            "spec": str(spec),
            "torch_fingerprint": encoder.fingerprint(),
            "graph": GRAPH_FILE,
            "graph_sha256": hashlib.sha256((tmp / GRAPH_FILE).read_bytes()).hexdigest(),
            "dim": int(encoder.dim),
            "quantization": quant,
            "calibration_texts": len(texts),
            **tok,
        }
        atomic_write_text(tmp / ENCODER_META, json.dumps(meta, indent=2) + "\n")
        ref = embed(encoder, texts, 32, progress=False)
        got = OnnxEncoder(tmp, threads).embed_texts(texts)
        cos = _cosines(ref, got)
        meta["agreement"] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
        if cos.mean() < MIN_MEAN_COSINE or cos.min() < MIN_COSINE:
            raise ExportError(
                f"the int8 encoder disagrees with PyTorch on {len(texts)} texts (mean cosine "
                f"{cos.mean():.4f} < {MIN_MEAN_COSINE} or min {cos.min():.4f} < {MIN_COSINE}); "
                f"nothing written to {out}; try export.quantize.smooth_alpha or exclude more",
                stage="int8",
            )
        meta["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_text(tmp / ENCODER_META, json.dumps(meta, indent=2) + "\n")
    log.info("int8 encoder ready in %.0f s (mean cosine %.4f)", meta["seconds"], cos.mean())
    return out
