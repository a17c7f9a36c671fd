"""ONNX Runtime serving of an exported encoder model (`paperops export`): texts -> logits.

The export directory holds one graph (input_ids + attention_mask -> logits: encoder, pooling,
normalisation and head together), optionally its int8 twin, and the fast tokenizer's
`tokenizer.json`. Tokenization, length-sorted sub-batches and the graph run are
`models.onnx_text.OnnxTextGraph`'s (shared with the hybrid family's int8 encoder); this adds the
export directory's manifest and the label map.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paperops.models.base import EXPORT_FILE, ModelLoadError, read_meta
from paperops.models.onnx_session import _reexport_hint, open_session
from paperops.models.onnx_text import (
    DEFAULT_SUB_BATCH,
    INPUT_NAMES,
    OnnxTextGraph,
    load_tokenizer,
)

__all__ = ["DEFAULT_SUB_BATCH", "INPUT_NAMES", "OUTPUT_NAME", "OnnxRuntime", "read_export_meta"]

OUTPUT_NAME = "logits"


def read_export_meta(export_dir: Path) -> dict[str, Any]:
    """export.json of an export directory, with a clear error when missing or corrupt."""
    path = Path(export_dir) / EXPORT_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: {export_dir} is not an export directory; run `paperops export`"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is corrupt ({e}); {_reexport_hint(export_dir)}") from e
    if not isinstance(meta, dict) or "runtime" not in meta:
        raise ModelLoadError(f"{path} lacks 'runtime'; {_reexport_hint(export_dir)}")
    return meta


class OnnxRuntime(OnnxTextGraph):
    """An exported model in ONNX Runtime; implements `paperops.serve.runtime.Runtime`."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        *,
        labels: Sequence[str],
        kind: str,
        do_lower_case: bool,
        pad_id: int,
        sub_batch: int = DEFAULT_SUB_BATCH,
        export_dir: Path | None = None,
    ) -> None:
        super().__init__(
            session,
            tokenizer,
            output=OUTPUT_NAME,
            do_lower_case=do_lower_case,
            pad_id=pad_id,
            sub_batch=sub_batch,
        )
        self.labels = list(labels)
        self.kind = kind
        self.export_dir = export_dir

    @classmethod
    def load(
        cls,
        export_dir: Path,
        int8: bool = False,
        threads: int | None = None,
        *,
        sub_batch: int = DEFAULT_SUB_BATCH,
    ) -> OnnxRuntime:
        """Open `model.onnx` (or `model.int8.onnx`) and the tokenizer of an export directory.

        Runs one short text through the model before returning, so a broken graph or one whose
        output does not match the label map fails here, not on the first request.
        """
        export_dir = Path(export_dir)
        hint = _reexport_hint(export_dir)
        meta = read_export_meta(export_dir)
        if meta["runtime"] != "onnx":
            raise ModelLoadError(
                f"{export_dir / EXPORT_FILE}: runtime is {meta['runtime']!r}, not 'onnx' (a "
                "tfidf export is served with runtime 'sklearn')"
            )
        labels = list(read_meta(export_dir)["labels"])
        files = meta.get("files") or {}
        key = "int8" if int8 else "model"
        name = files.get(key)
        if not name:
            raise ModelLoadError(
                f"{export_dir} has no {'int8' if int8 else 'fp32'} model in {EXPORT_FILE}; "
                + ("serve runtime 'onnx' or re-export without --no-int8" if int8 else hint)
            )
        model_path = export_dir / name
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path} not found; {hint}")
        tok_path = export_dir / str(files.get("tokenizer", "tokenizer/tokenizer.json"))
        tokenizer, pad_id, lower = load_tokenizer(tok_path, meta, hint)
        session = open_session(model_path, threads, hint)
        rt = cls(
            session,
            tokenizer,
            labels=labels,
            kind="onnx-int8" if int8 else "onnx",
            do_lower_case=lower,
            pad_id=pad_id,
            sub_batch=sub_batch,
            export_dir=export_dir,
        )
        width = rt.check_io(model_path, hint)
        if width != len(labels):
            raise ModelLoadError(
                f"{model_path} gives {width} scores per text but model.json has "
                f"{len(labels)} labels; {hint}"
            )
        return rt

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k) float64 logits in input order."""
        return self.run(texts, len(self.labels))
