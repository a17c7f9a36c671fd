"""int8 for the classifier's ONNX graph: SmoothQuant then dynamic per-channel quantization.

Per input channel the activation outliers of BERT-style encoders (LayerNorm dims ~15x the
median) are divided out of the activations and multiplied into the weights (exact in fp32), the
strength alpha chosen per MatMul group by simulating the quantization error on calibration
texts; FFN output MatMuls and the first layers stay fp32. Top-1 agreement with PyTorch on the
val split: plain dynamic int8 ~97.4%, + SmoothQuant 99.0%, + those layers in fp32 99.4-99.55%.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paperops.export.common import ExportConfig, QuantizeConfig, _quiet_logging
from paperops.models.onnx_session import session_options

_ALPHA_GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


def _quant_act(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """What ONNX Runtime's DynamicQuantizeLinear does (uint8, asymmetric, range incl. 0)."""
    lo, hi = min(0.0, lo), max(0.0, hi)
    scale = (hi - lo) / 255.0 or 1.0
    zp = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale


def _quant_weight(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """Symmetric int8 weights, one scale per output column (or per tensor)."""
    amax = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.round(w / scale) * scale


@dataclass
class _Group:
    """MatMuls with constant weights that read the same activation tensor."""

    tensor: str
    nodes: list[Any]
    amax: np.ndarray | None = None
    batch_ranges: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)


def _node_key(node: Any) -> str:
    """What `quantize.exclude` regexes are matched against: the node name (torchscript names
    carry the module path, e.g. `/encoder/model/encoder/layer.0/output/dense/MatMul`) and the
    dynamo exporter's `namespace` metadata (`...encoder.layer.0.output.dense: ...Linear`)."""
    meta = {p.key: p.value for p in node.metadata_props}
    return f"{node.name} {meta.get('namespace', '')}"


def _excluded(node: Any, patterns: Sequence[str]) -> bool:
    key = _node_key(node)
    return any(re.search(p, key) for p in patterns)


def _smooth_groups(model: Any, qcfg: QuantizeConfig) -> list[_Group]:
    inits = {i.name for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[str, _Group] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or "MatMul" not in qcfg.op_types:
            continue
        if _excluded(node, qcfg.exclude):
            continue
        w = node.input[1]
        if w not in inits or uses.get(w, 0) != 1:  # shared (tied) weights: leave alone
            continue
        groups.setdefault(node.input[0], _Group(node.input[0], [])).nodes.append(node)
    return list(groups.values())


def _collect_activations(
    model_path: Path, groups: list[_Group], rt: Any, texts: Sequence[str], threads: int | None
) -> None:
    """Per-channel |max| of each group's input over the calibration texts, each batch's
    per-channel range (dynamic quantization is per batch tensor) and a row sample."""
    if not groups:  # everything excluded (e.g. a 2-layer encoder): nothing to smooth
        return
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    for g in groups:
        model.graph.output.append(helper.make_tensor_value_info(g.tensor, TensorProto.FLOAT, None))
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    names = [g.tensor for g in groups]
    ids = rt.encode(texts)
    order = np.argsort([-len(x) for x in ids], kind="stable")
    rng = np.random.default_rng(0)
    for start in range(0, len(ids), rt.sub_batch):
        feed = rt.pad([ids[i] for i in order[start : start + rt.sub_batch]])
        for g, act in zip(groups, session.run(names, feed), strict=True):
            a = act.reshape(-1, act.shape[-1])
            g.batch_ranges.append((a.min(axis=0), a.max(axis=0)))
            amax = np.abs(a).max(axis=0)
            g.amax = amax if g.amax is None else np.maximum(g.amax, amax)
            g.rows.append(a[rng.choice(len(a), size=min(len(a), 128), replace=False)])


def _smooth_scales(g: _Group, weights: list[np.ndarray], alpha: float | str, per_channel: bool):
    """SmoothQuant scales s (activations / s, weights * s) for one group, and the alpha used."""
    w = np.concatenate(weights, axis=1)
    wmax = np.maximum(np.abs(w).max(axis=1), 1e-5)
    amax = np.maximum(g.amax if g.amax is not None else np.ones_like(wmax), 1e-5)

    def scales(a: float) -> np.ndarray:
        return np.clip(amax**a / wmax ** (1.0 - a), 1e-2, 1e2)

    if alpha != "auto":
        return scales(float(alpha)), float(alpha)
    refs = [r @ w for r in g.rows]
    norm = sum(float((r**2).sum()) for r in refs) or 1.0
    best: tuple[float, float] = (np.inf, 0.0)
    for a in _ALPHA_GRID:
        s = scales(a)
        wq = _quant_weight(w * s[:, None], per_channel)
        err = 0.0
        for rows, (lo, hi), ref in zip(g.rows, g.batch_ranges, refs, strict=True):
            xq = _quant_act(rows / s, float((lo / s).min()), float((hi / s).max()))
            err += float(((xq @ wq - ref) ** 2).sum())
        best = min(best, (err / norm, a))
    return scales(best[1]), best[1]


def _smooth(
    model_path: Path,
    out_path: Path,
    rt: Any,
    texts: Sequence[str],
    cfg: ExportConfig,
    threads: int | None,
) -> dict[str, Any]:
    """Write a SmoothQuant-ed copy of the fp32 graph (same function, easier to quantize)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    groups = _smooth_groups(model, cfg.quantize)
    _collect_activations(model_path, groups, rt, texts, threads)
    inits = {i.name: i for i in model.graph.initializer}
    alphas = []
    muls = []
    for k, g in enumerate(groups):
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in g.nodes]
        if any(w.ndim != 2 for w in weights):
            continue
        s, alpha = _smooth_scales(g, weights, cfg.quantize.smooth_alpha, cfg.per_channel)
        alphas.append(alpha)
        s = s.astype(np.float32)
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"smooth_inv_{k}")
        model.graph.initializer.append(inv)
        smoothed = f"{g.tensor}_smoothed"
        muls.append(helper.make_node("Mul", [g.tensor, inv.name], [smoothed], f"smooth_{k}"))
        for node, w in zip(g.nodes, weights, strict=True):
            node.input[0] = smoothed
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1])
            )
    nodes = list(model.graph.node)
    for mul in muls:  # keep topological order: right before the first reader
        first = min(i for i, n in enumerate(nodes) if mul.output[0] in n.input)
        nodes.insert(first, mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out_path))
    return {
        "groups": len(alphas),
        "alpha_mean": round(float(np.mean(alphas)), 3) if alphas else None,
        "alphas": [round(float(a), 2) for a in alphas],
    }


def _quantize(
    fp32_path: Path,
    out_path: Path,
    rt: Any,
    calib_texts: Sequence[str],
    cfg: ExportConfig,
    threads: int | None,
    work: Path,
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = cfg.quantize
    source = fp32_path
    info: dict[str, Any] = {
        "method": "dynamic",
        "per_channel": cfg.per_channel,
        "reduce_range": q.reduce_range,
        "op_types": q.op_types,
        "exclude": q.exclude,
        "smooth_alpha": q.smooth_alpha,
        "calibration_texts": len(calib_texts) if q.smooth_alpha is not None else 0,
    }
    if q.smooth_alpha is not None and calib_texts:
        source = work / "model.smoothed.onnx"
        info["smoothing"] = _smooth(fp32_path, source, rt, calib_texts, cfg, threads)
    model = onnx.load(str(source), load_external_data=False)
    excluded = [n.name for n in model.graph.node if _excluded(n, q.exclude)]
    info["excluded_nodes"] = len(excluded)
    with warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(source),
            str(out_path),
            per_channel=cfg.per_channel,
            reduce_range=q.reduce_range,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=q.op_types,
            nodes_to_exclude=excluded,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return info
