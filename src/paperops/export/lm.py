"""`paperops export` of a language model (`lm` bundle): the GPT-2 decoder as ONE ONNX graph.

The graph takes `input_ids`, `attention_mask` (past + new positions), `position_ids` and the
per-layer past keys/values, and returns the LAST position's logits plus the grown keys/values
(`paperops.inference.onnx_decoder` names them). The prefill is the same graph with a zero-length
past (ONNX Runtime accepts 0-sized dims), so one file serves prefill and decode steps.

Why a hand-written forward instead of tracing `GPT2LMHeadModel` itself: transformers 5 passes the
cache as a `DynamicCache` object and builds masks in `masking_utils`, both of which change
between releases; the wrapper below reuses the model's own weights and modules (LayerNorms,
activation) and writes attention, the explicit causal+padding mask, the past concatenation and
the last-position head out in plain tensor ops, which trace into a small static graph. Linear
layers are written as MatMul + Add (transformers' Conv1D exports as Gemm, which ONNX Runtime's
dynamic quantizer does not handle), and only the last position goes through the vocabulary
projection (the prefill does not pay for s x vocab logits it would throw away). Parity with the
transformers model (through `TorchDecoder`, the torch serving backend) is the check.

int8: `quantize_dynamic` (per-channel weights) of the MatMuls with constant weights; the
attention score MatMuls (activation x activation) stay fp32. Nothing is written unless fp32
logits match PyTorch within tolerance, greedy tokens agree, and int8 agrees above its threshold
(teacher-forced: both backends are fed PyTorch's greedy token, so one flip does not cascade).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paperops.config import dataclass_from_mapping
from paperops.export.common import (
    FORMAT_VERSION,
    ExportError,
    _quiet_logging,
    _versions,
    bundle_fingerprint,
    is_valid_export,
)
from paperops.export.lm_parity import _compare, _fail_if, _perplexities
from paperops.inference.onnx_decoder import LM_INPUTS, LOGITS, OnnxDecoder, past_names
from paperops.io import atomic_dir, atomic_write_text
from paperops.models.base import EXPORT_FILE, LANGUAGE_MODEL, LM_FAMILY, META_FILE, probe_task
from paperops.models.process import torch_threads

log = logging.getLogger(__name__)

__all__ = [
    "DECODER_FILE",
    "INT8_FILE",
    "LMExportConfig",
    "ensure_lm_export",
    "export_lm",
    "is_lm_bundle",
]

DECODER_FILE = "decoder.onnx"
INT8_FILE = "decoder.int8.onnx"
COPIED_FILES = (
    META_FILE,
    "tokenizer.json",
    "config.json",
    "generation_config.json",
    "training.json",
)
# Fixed parity prompts (both corpora's styles); the export fails on a mismatch, not on quality.
DEFAULT_PROMPTS = (
    "What are the side effects of taking ibuprofen every day?",
    "Can I take antibiotics while pregnant?",
    "How long does a common cold usually last?",
    "Title: Deep learning for protein structure prediction\nAbstract:",
    "Title: On the convergence of stochastic gradient descent\nAbstract: We study",
    "Is it normal to have headaches after a concussion?",
    "Title: Dark matter halos in dwarf galaxies\nAbstract: We present",
    "What should I do if my blood pressure is high?",
)


@dataclass
class LMExportConfig:
    """configs/export/default.yaml `lm:` as a dataclass."""

    int8: bool = True
    opset: int = 18
    per_channel: bool = True
    exclude: list[str] = field(default_factory=list)  # regexes of MatMul weight/node names
    prompts: int = 8  # parity prompts (the first n of DEFAULT_PROMPTS or of those given)
    steps: int = 32  # teacher-forced greedy steps per prompt after the prefill
    fp32_max_abs_diff: float = 1e-3  # max |logit_onnx - logit_torch|
    fp32_min_agreement: float = 0.99  # greedy top-1 agreement (exact ties may flip)
    int8_min_agreement: float = 0.9
    ppl_texts: int = 16  # held-out texts for the perplexity delta (when texts are given)
    int8_max_ppl_increase: float | None = 0.05  # relative, vs PyTorch (null: report only)

    def __post_init__(self) -> None:
        self.exclude = [str(p) for p in self.exclude]
        for p in self.exclude:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"export.lm.exclude: bad regex {p!r} ({e})") from e
        for name in ("fp32_min_agreement", "int8_min_agreement"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"export.lm.{name} must be in [0, 1]")
        if int(self.prompts) < 1 or int(self.steps) < 0:
            raise ValueError("export.lm.prompts must be >= 1 and export.lm.steps >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> LMExportConfig:
        if values is not None and not isinstance(values, dict):
            from omegaconf import OmegaConf

            values = OmegaConf.to_container(values, resolve=True)  # type: ignore[assignment]
        return dataclass_from_mapping(cls, values, "export.lm")  # type: ignore[return-value]


# --- the graph -------------------------------------------------------------------------------


def _decoder_module(model: Any) -> Any:
    """GPT2LMHeadModel -> forward(input_ids, attention_mask, position_ids, *past) ->
    (last-position logits, *present) with the model's own weights."""
    import torch

    cfg = model.config
    if getattr(cfg, "add_cross_attention", False):
        raise ExportError("GPT-2 with cross-attention is not a decoder-only LM; cannot export")
    n_head = int(cfg.n_head)
    head_dim = int(cfg.n_embd) // n_head
    base_scale = 1.0 / math.sqrt(head_dim) if cfg.scale_attn_weights else 1.0
    inverse_layer = bool(cfg.scale_attn_by_inverse_layer_idx)
    t = model.transformer

    def linear(x: torch.Tensor, conv: Any) -> torch.Tensor:
        # transformers' Conv1D is x @ W + b with W (in, out): MatMul + Add, quantizable
        return torch.matmul(x, conv.weight) + conv.bias

    class DecoderGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe, self.h, self.ln_f = t.wte, t.wpe, t.h, t.ln_f
            # the tied head, transposed once: a named initializer for `exclude` patterns
            self.register_buffer("lm_head_weight_t", model.lm_head.weight.detach().t().clone())

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            *past: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            b, s = input_ids.shape
            total = attention_mask.shape[1]
            x = self.wte(input_ids) + self.wpe(position_ids)
            q_pos = torch.arange(s, device=x.device) + (total - s)
            k_pos = torch.arange(total, device=x.device)
            causal = (k_pos[None, :] <= q_pos[:, None])[None, None]
            allowed = causal & attention_mask[:, None, None, :].bool()
            presents: list[torch.Tensor] = []
            for i, block in enumerate(self.h):
                qkv = linear(block.ln_1(x), block.attn.c_attn)
                q, k, v = (
                    z.reshape(b, s, n_head, head_dim).transpose(1, 2)
                    for z in qkv.split(n_head * head_dim, dim=2)
                )
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                presents += [k, v]
                scale = base_scale / (i + 1) if inverse_layer else base_scale
                w = torch.matmul(q * scale, k.transpose(-1, -2))
                # finite minimum, not -inf: a fully masked (left-padding) row stays finite
                w = torch.where(allowed, w, torch.full_like(w, torch.finfo(w.dtype).min))
                o = torch.matmul(w.softmax(-1), v).transpose(1, 2).reshape(b, s, n_head * head_dim)
                x = x + linear(o, block.attn.c_proj)
                x = x + linear(
                    block.mlp.act(linear(block.ln_2(x), block.mlp.c_fc)), block.mlp.c_proj
                )
            head = self.get_buffer("lm_head_weight_t")
            logits = torch.matmul(self.ln_f(x[:, -1, :]), head)
            return (logits, *presents)

    return DecoderGraph().eval()


def _export_graph(model: Any, path: Path, opset: int) -> None:
    """TorchScript export with dynamic batch / sequence / past axes (one file)."""
    import torch

    cfg = model.config
    n_layer, n_head = int(cfg.n_layer), int(cfg.n_head)
    head_dim = int(cfg.n_embd) // n_head
    module = _decoder_module(model)
    past_in, past_out = past_names(n_layer, "past"), past_names(n_layer, "present")
    # trace with a non-empty past and 2 new tokens so no dimension is specialised to 0 or 1
    b, s, p = 2, 3, 2
    ids = torch.zeros((b, s), dtype=torch.long)
    mask = torch.ones((b, p + s), dtype=torch.long)
    pos = torch.arange(p, p + s, dtype=torch.long).expand(b, s).contiguous()
    past = [torch.zeros((b, n_head, p, head_dim)) for _ in past_in]
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        LOGITS: {0: "batch"},
    }
    dynamic |= {n: {0: "batch", 2: "past_sequence"} for n in past_in}
    dynamic |= {n: {0: "batch", 2: "total_sequence"} for n in past_out}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter; parity is the check
        torch.onnx.export(
            module,
            (ids, mask, pos, *past),
            str(path),
            input_names=[*LM_INPUTS, *past_in],
            output_names=[LOGITS, *past_out],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )


def _quantize(fp32_path: Path, out_path: Path, cfg: LMExportConfig) -> dict[str, Any]:
    """Dynamic int8 of the MatMuls with constant weights (minus `exclude`); the rest fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    quantized, kept = [], []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        key = f"{node.name} {node.input[1]}"
        if node.input[1] in inits and not any(re.search(p, key) for p in cfg.exclude):
            quantized.append(node.name)
        else:
            kept.append(node.name)
    with warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fp32_path),
            str(out_path),
            per_channel=cfg.per_channel,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=kept,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {
        "method": "dynamic",
        "per_channel": cfg.per_channel,
        "exclude": cfg.exclude,
        "quantized_matmuls": len(quantized),
        "fp32_matmuls": len(kept),
    }


# --- parity ----------------------------------------------------------------------------------


# --- export ----------------------------------------------------------------------------------


def export_lm(
    bundle_dir: Path,
    out_dir: Path,
    *,
    cfg: LMExportConfig | Mapping[str, Any] | None = None,
    int8: bool | None = None,
    prompts: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Export an `lm` bundle to `out_dir` (replaced atomically, only when parity holds) and
    return its export.json (parity figures under "parity").

    `prompts`: parity prompts (default DEFAULT_PROMPTS); `texts`: held-out texts for the
    perplexity delta (skipped when None); `int8` overrides the config. Raises ModelLoadError for
    a missing/corrupt bundle and ExportError when conversion fails or parity misses.
    """
    # deferred: pulls torch
    from paperops.inference.decoding import TorchDecoder

    # deferred: pulls lightning, torch
    from paperops.models.lm import load_lm

    t0 = time.perf_counter()
    c = cfg if isinstance(cfg, LMExportConfig) else LMExportConfig.from_mapping(cfg)
    do_int8 = c.int8 if int8 is None else bool(int8)
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if bundle_dir.resolve() == out_dir.resolve():
        raise ExportError(f"the export directory must differ from the bundle ({bundle_dir})")
    timings: dict[str, float] = {}
    with torch_threads(threads):
        lm = load_lm(bundle_dir)
        mcfg = lm.model.config
        ref = TorchDecoder(lm)
        prompt_texts = list(prompts if prompts is not None else DEFAULT_PROMPTS)[: c.prompts]
        if not prompt_texts:
            raise ExportError("no parity prompts: give prompts or leave the default")
        budget = max(1, lm.context_length // 2)  # prompt + steps must fit in the context
        rows = [lm.prompt_ids(p)[:budget] for p in prompt_texts]
        steps = min(c.steps, lm.context_length - max(len(r) for r in rows))
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "family": LM_FAMILY,
            "runtime": "onnx",
            "int8": False,
            "files": {"model": DECODER_FILE, "int8": None, "tokenizer": "tokenizer.json"},
            "opset": c.opset,
            "exporter": "torchscript",
            "inputs": [*LM_INPUTS, *past_names(int(mcfg.n_layer), "past")],
            "outputs": [LOGITS, *past_names(int(mcfg.n_layer), "present")],
            "n_layer": int(mcfg.n_layer),
            "n_head": int(mcfg.n_head),
            "head_dim": int(mcfg.n_embd) // int(mcfg.n_head),
            "vocab_size": int(lm.vocab_size),
            "context_length": int(lm.context_length),
            "eos_token_id": int(lm.eos_token_id),
            "params": int(lm.params),
            "source": {
                "bundle": str(bundle_dir.resolve()),
                "fingerprint": bundle_fingerprint(bundle_dir),
                "registered_model": lm.meta.get("registered_model"),
                "version": lm.meta.get("version"),
            },
            "versions": _versions(),
        }
        with atomic_dir(out_dir) as tmp:
            for name in COPIED_FILES:
                if (bundle_dir / name).is_file():
                    shutil.copy2(bundle_dir / name, tmp / name)
            t = time.perf_counter()
            try:
                _export_graph(lm.model, tmp / DECODER_FILE, c.opset)
            except ExportError:
                raise
            except Exception as e:
                raise ExportError(
                    f"torch.onnx could not export the decoder of {bundle_dir}: "
                    f"{type(e).__name__}: {e}",
                    stage="fp32",
                ) from e
            timings["onnx_export"] = time.perf_counter() - t
            atomic_write_text(tmp / EXPORT_FILE, json.dumps(meta, indent=2) + "\n")
            t = time.perf_counter()
            fp32 = OnnxDecoder.load(tmp, int8=False, threads=threads)
            parity: dict[str, Any] = {"prompts": len(rows), "steps": steps}
            parity["fp32"] = _compare(ref, fp32, rows, steps, lm.eos_token_id) | {
                "limit_max_abs_diff": c.fp32_max_abs_diff,
                "limit_min_agreement": c.fp32_min_agreement,
            }
            p = parity["fp32"]
            p["passed"] = bool(
                p["max_abs_diff"] <= c.fp32_max_abs_diff and p["agreement"] >= c.fp32_min_agreement
            )
            timings["parity_fp32"] = time.perf_counter() - t
            _fail_if(parity, "fp32", out_dir)
            backends: dict[str, Any] = {"torch": ref, "fp32": fp32}
            if do_int8:
                t = time.perf_counter()
                try:
                    meta["quantization"] = _quantize(tmp / DECODER_FILE, tmp / INT8_FILE, c)
                except Exception as e:
                    raise ExportError(
                        f"int8 quantization failed ({type(e).__name__}: {e}); export without "
                        "it (--no-int8 / export.lm.int8=false)",
                        stage="int8",
                    ) from e
                meta["files"]["int8"] = INT8_FILE
                meta["int8"] = True
                atomic_write_text(tmp / EXPORT_FILE, json.dumps(meta, indent=2) + "\n")
                timings["quantize"] = time.perf_counter() - t
                t = time.perf_counter()
                q8 = OnnxDecoder.load(tmp, int8=True, threads=threads)
                parity["int8"] = _compare(ref, q8, rows, steps, lm.eos_token_id) | {
                    "limit_max_abs_diff": None,
                    "limit_min_agreement": c.int8_min_agreement,
                }
                parity["int8"]["passed"] = parity["int8"]["agreement"] >= c.int8_min_agreement
                timings["parity_int8"] = time.perf_counter() - t
                _fail_if(parity, "int8", out_dir)
                backends["int8"] = q8
            if texts:
                t = time.perf_counter()
                ppl = _perplexities(lm, backends, texts, c.ppl_texts)
                timings["perplexity"] = time.perf_counter() - t
                if ppl is not None:
                    parity["perplexity"] = ppl
                    if "int8" in ppl:
                        rise = ppl["int8"] / ppl["torch"] - 1.0
                        ppl["int8_relative_increase"] = rise
                        limit = c.int8_max_ppl_increase
                        if limit is not None and rise > limit:
                            parity["int8"]["passed"] = False
                            parity["int8"]["perplexity_increase"] = rise
                            _fail_if(parity, "int8", out_dir)
            meta["parity"] = parity
            meta["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            meta["seconds"] = {k: round(v, 2) for k, v in timings.items()} | {
                "total": round(time.perf_counter() - t0, 2)
            }
            atomic_write_text(tmp / EXPORT_FILE, json.dumps(meta, indent=2) + "\n")
    log.info("exported %s -> %s in %.1f s", bundle_dir, out_dir, time.perf_counter() - t0)
    return meta


def is_lm_bundle(bundle_dir: Path) -> bool:
    """True when `bundle_dir/model.json` names the `lm` family (read without the classifier
    manifest's checks, so the CLI can dispatch before loading anything)."""
    return probe_task(Path(bundle_dir)) == LANGUAGE_MODEL


def ensure_lm_export(
    bundle_dir: Path,
    out_dir: Path,
    *,
    cfg: LMExportConfig | Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> Path:
    """`out_dir` holding a valid export of the `lm` bundle: reused when its export.json names
    the same bundle fingerprint, else exported now (what serving does for a registered LM that
    was never exported). If only int8 misses parity, the export is redone fp32-only rather than
    leaving the server without a model."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if is_valid_export(out_dir, bundle_fingerprint(bundle_dir)):
        log.info("reusing the export of %s in %s", bundle_dir, out_dir)
        return out_dir
    try:
        export_lm(bundle_dir, out_dir, cfg=cfg, threads=threads)
    except ExportError as e:
        if e.stage != "int8":
            raise
        log.warning("int8 export of %s failed parity (%s); exporting fp32 only", bundle_dir, e)
        export_lm(bundle_dir, out_dir, cfg=cfg, int8=False, threads=threads)
    return out_dir
