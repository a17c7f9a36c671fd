"""ONNX text graphs from PyTorch: how every exported encoder graph is written.

Shared by the classifier export (encoder + head -> `logits`) and the hybrid family's encoder
(`export.encoder`: encoder -> `embedding`); the choices (torchscript exporter, eager attention)
are measured in `export.classifier`'s docstring. `merge_head` appends a PyTorch head to an
existing encoder graph, so a head trained on int8 embeddings is exported over the very graph
that computed them.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

from paperops.export.common import ExportError
from paperops.models.onnx_text import INPUT_NAMES

__all__ = ["export_text_graph", "merge_head", "save_tokenizer"]


def export_text_graph(
    module: Any, encoder: Any, path: Path, opset: int, exporter: str, output: str
) -> None:
    """`module(input_ids, attention_mask) -> output` as one ONNX file with dynamic batch and
    sequence axes (no external data); `encoder` tokenizes the sample inputs."""
    import torch

    with contextlib.suppress(AttributeError, ValueError, ImportError):
        # plain matmul + softmax attention: ONNX Runtime fuses it better than the SDPA export
        encoder.model.set_attn_implementation("eager")
    sample = encoder.tokenize(["a short text", "a somewhat longer text to give the batch padding"])
    inputs = {k: sample[k] for k in INPUT_NAMES}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter; parity is the check
        if exporter == "dynamo":
            from torch.export import Dim

            batch, seq = Dim("batch"), Dim("sequence")
            torch.onnx.export(
                module,
                (),
                str(path),
                kwargs=inputs,
                input_names=list(INPUT_NAMES),
                output_names=[output],
                dynamic_shapes={k: {0: batch, 1: seq} for k in INPUT_NAMES},
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
        else:
            torch.onnx.export(
                module,
                tuple(inputs[k] for k in INPUT_NAMES),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=[output],
                dynamic_axes={
                    **{k: {0: "batch", 1: "sequence"} for k in INPUT_NAMES},
                    output: {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )


def save_tokenizer(encoder: Any, directory: Path) -> dict[str, Any]:
    """The tokenizer's files + what `OnnxRuntime` needs to reproduce `Encoder.tokenize`."""
    tok = encoder.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"the encoder's tokenizer ({type(tok).__name__}) is not a fast tokenizer: serving "
            "needs its tokenizer.json; use an encoder that ships one"
        )
    directory.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(directory))
    # the backend exactly as transformers runs it (normalizer, pre-tokenizer, post-processor)
    backend.save(str(directory / "tokenizer.json"))
    if tok.pad_token_id is None:
        raise ExportError("the encoder's tokenizer has no pad token; cannot batch texts")
    return {
        "max_seq_length": int(encoder.max_seq_length),
        "do_lower_case": bool(encoder.do_lower_case),
        "pad_id": int(tok.pad_token_id),
        "pad_token": str(tok.pad_token),
        "truncation_side": str(getattr(tok, "truncation_side", "right")),
        "padding_side": str(getattr(tok, "padding_side", "right")),
    }


def merge_head(
    encoder_graph: Path, head: Any, dim: int, path: Path, opset: int, output: str
) -> None:
    """`encoder_graph` (-> "embedding") followed by the torch `head` (dim -> k) as one graph."""
    import onnx
    import torch
    from onnx import compose

    head_path = path.with_name(f".{path.name}.head.onnx")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head.eval(),
            (torch.zeros(2, dim),),
            str(head_path),
            input_names=["embedding"],
            output_names=[output],
            dynamic_axes={"embedding": {0: "batch"}, output: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    try:
        enc = onnx.load(str(encoder_graph))
        top = onnx.load(str(head_path))
        # one opset per domain and one IR version, or merge_models refuses the pair
        top = (
            onnx.version_converter.convert_version(top, _opset(enc))
            if _opset(top) != _opset(enc)
            else top
        )
        top.ir_version = enc.ir_version
        # head names get a prefix (no clash with the encoder's); its input and output keep theirs
        top = compose.add_prefix(top, "head/", rename_inputs=False, rename_outputs=False)
        merged = compose.merge_models(enc, top, io_map=[("embedding", "embedding")])
        onnx.checker.check_model(merged)
        onnx.save(merged, str(path))
    except Exception as e:
        raise ExportError(
            f"could not append the head to {encoder_graph}: {type(e).__name__}: {e}", stage="fp32"
        ) from e
    finally:
        head_path.unlink(missing_ok=True)


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
