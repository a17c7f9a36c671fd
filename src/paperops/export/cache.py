"""The export cache: `ensure_export` re-exports a bundle (e.g. the registry champion) only when its
fingerprint changed, so `paperops serve --runtime onnx` starts from a cached graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paperops.export.classifier import export_bundle
from paperops.export.common import ExportConfig, ExportError, bundle_fingerprint, is_valid_export
from paperops.models.base import read_meta

log = logging.getLogger(__name__)


def ensure_export(
    bundle_dir: Path,
    out_dir: Path,
    *,
    cfg_export: ExportConfig | Mapping[str, Any] | None = None,
    processed_dir: Path | None = None,
    texts: Sequence[str] | None = None,
    seed: int = 42,
    threads: int | None = None,
) -> Path:
    """`out_dir` holding a valid export of `bundle_dir`: reused when its export.json names the
    same bundle fingerprint, else exported there now (what `paperops serve` does for a
    registered neural champion that was never exported).

    A serving host usually has no processed data: parity then runs on `texts` or on
    `probe_texts` (a deliberate choice: calibration.json holds no texts, and a check on a few
    dozen texts still proves graph and tokenizer reproduce PyTorch). If only the int8 model
    misses parity there, the export is redone without it (fp32 ONNX, still parity-checked)
    rather than leaving the server without a model.
    """
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    read_meta(bundle_dir)
    fingerprint = bundle_fingerprint(bundle_dir)
    if is_valid_export(out_dir, fingerprint):
        log.info("reusing the export of %s in %s", bundle_dir, out_dir)
        return out_dir
    kwargs: dict[str, Any] = {
        "cfg_export": cfg_export,
        "processed_dir": processed_dir,
        "texts": texts,
        "seed": seed,
        "threads": threads,
    }
    try:
        export_bundle(bundle_dir, out_dir, **kwargs)
    except ExportError as e:
        if e.stage != "int8":
            raise
        log.warning("int8 export of %s failed parity (%s); exporting fp32 only", bundle_dir, e)
        export_bundle(bundle_dir, out_dir, int8=False, **kwargs)
    return out_dir
