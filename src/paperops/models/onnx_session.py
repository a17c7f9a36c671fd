"""Opening ONNX Runtime sessions the same way for the classifier and the decoder: thread counts
from config, and a clear 're-export' hint when a graph is missing or corrupt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paperops.models.base import ModelLoadError

DEFAULT_THREADS = 2  # the free cores of the serving machine (STACK.md)


def open_session(model_path: Path, threads: int | None, hint: str) -> Any:
    """A CPU InferenceSession, or a ModelLoadError naming the file, the cause and `hint`."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(model_path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own (pybind) exception types
        raise ModelLoadError(
            f"{model_path} cannot be loaded by ONNX Runtime ({type(e).__name__}: "
            f"{str(e).strip()[:300]}); {hint}"
        ) from e


def _reexport_hint(export_dir: Path) -> str:
    return f"re-export it: `paperops export --model <bundle> --output {export_dir}`"


def session_options(threads: int | None) -> Any:
    """One inference at a time on `threads` cores: intra-op parallelism only, full graph
    optimization (fusions), no inter-op thread pool competing for the same cores."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or DEFAULT_THREADS)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: the fusion notes are noise in serving logs
    return so
