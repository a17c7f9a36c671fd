"""Parity of the exported decoder with PyTorch: teacher-forced logits, step-by-step decoding with
the past key values, held-out perplexity of fp32 and int8, and the table `paperops export`
prints. `export.lm` refuses to write an export whose figures miss the limits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paperops.export.common import (
    ExportError,
)


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any, Any]:
    # deferred: pulls torch
    from paperops.inference.decoding import left_pad

    return left_pad(rows, pad)


def _teacher_forced(
    ref: Any, test: Any, rows: Sequence[Sequence[int]], steps: int, pad: int
) -> dict[str, Any]:
    """Prefill + `steps` decode steps with past on both backends, both fed PyTorch's greedy
    token: max |Δ logit| (prefill, decode) and top-1 agreement over every position."""
    import torch

    ids, mask, pos = _left_pad(rows, pad)
    r, r_past = ref.forward(ids, mask, pos, None)
    g, g_past = test.forward(ids, mask, pos, None)
    prefill = float((r - g).abs().max())
    decode, agree, n = 0.0, int((r.argmax(-1) == g.argmax(-1)).sum()), r.shape[0]
    last = pos[:, -1:]
    for _ in range(steps):
        tok = r.argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
        last = last + 1
        r, r_past = ref.forward(tok, mask, last, r_past)
        g, g_past = test.forward(tok, mask, last, g_past)
        decode = max(decode, float((r - g).abs().max()))
        agree += int((r.argmax(-1) == g.argmax(-1)).sum())
        n += r.shape[0]
    return {"prefill_max_abs_diff": prefill, "decode_max_abs_diff": decode, "agree": agree, "n": n}


def _compare(
    ref: Any, test: Any, rows: Sequence[Sequence[int]], steps: int, pad: int
) -> dict[str, Any]:
    """Batched (left-padded, as served at batch > 1) and batch-1 runs, pooled."""
    runs = [_teacher_forced(ref, test, rows, steps, pad)]
    if len(rows) > 1:
        runs.append(_teacher_forced(ref, test, rows[:1], steps, pad))
    pre = max(r["prefill_max_abs_diff"] for r in runs)
    dec = max(r["decode_max_abs_diff"] for r in runs)
    agree, n = sum(r["agree"] for r in runs), sum(r["n"] for r in runs)
    return {
        "n": n,
        "prefill_max_abs_diff": pre,
        "decode_max_abs_diff": dec,
        "max_abs_diff": max(pre, dec),
        "agreement": agree / max(n, 1),
        "disagreements": n - agree,
    }


def _stepwise_nll(backend: Any, blocks: Sequence[Sequence[int]], pad: int) -> tuple[float, int]:
    """Sum of next-token NLL over right-padded blocks, fed one token per step with past (the
    way generation runs the graph), and the number of scored tokens."""
    import torch

    width = max(len(b) for b in blocks)
    ids = torch.full((len(blocks), width), pad, dtype=torch.long)
    mask = torch.zeros((len(blocks), width), dtype=torch.long)
    for i, blk in enumerate(blocks):
        ids[i, : len(blk)] = torch.tensor(list(blk), dtype=torch.long)
        mask[i, : len(blk)] = 1
    past, total, count = None, 0.0, 0
    for t in range(width - 1):
        pos = torch.full((len(blocks), 1), t, dtype=torch.long)
        logits, past = backend.forward(ids[:, t : t + 1], mask[:, : t + 1], pos, past)
        keep = mask[:, t + 1].bool()
        if keep.any():
            logp = torch.log_softmax(logits.float(), dim=-1)
            total -= float(logp[keep].gather(1, ids[keep, t + 1 : t + 2]).sum())
            count += int(keep.sum())
    return total, count


def _perplexities(lm: Any, backends: Mapping[str, Any], texts: Sequence[str], n_texts: int):
    # deferred: pulls lightning, torch
    from paperops.models.lm_module import pack_blocks

    blocks = pack_blocks(
        [lm.encode(t) for t in list(texts)[:n_texts]],
        lm.eos_token_id,
        lm.context_length,
        keep_tail=True,
    )
    if not blocks:
        return None
    out: dict[str, Any] = {"texts": min(len(texts), n_texts), "blocks": len(blocks)}
    for name, backend in backends.items():
        total, count = 0.0, 0
        for i in range(0, len(blocks), 8):
            s, c = _stepwise_nll(backend, blocks[i : i + 8], lm.eos_token_id)
            total, count = total + s, count + c
        out["tokens"] = count
        out[name] = math.exp(min(total / max(count, 1), 50.0))
    return out


def lm_parity_table(parity: Mapping[str, Any]) -> str:
    """The parity figures as a small text table (CLI output, error messages)."""
    rows = [
        f"{'model':6s} {'n':>5s} {'prefill':>9s} {'decode':>9s} {'limit':>8s} {'top-1':>7s} "
        f"{'limit':>6s}"
    ]
    for name in ("fp32", "int8"):
        p = parity.get(name)
        if not isinstance(p, Mapping):
            continue
        limit = f"{p['limit_max_abs_diff']:8.1e}" if p.get("limit_max_abs_diff") else " " * 8
        rows.append(
            f"{name:6s} {p['n']:5d} {p['prefill_max_abs_diff']:9.2e} "
            f"{p['decode_max_abs_diff']:9.2e} {limit} {p['agreement']:7.4f} "
            f"{p['limit_min_agreement']:6.3f}  " + ("ok" if p["passed"] else "FAIL")
        )
    ppl = parity.get("perplexity")
    if isinstance(ppl, Mapping):
        rows.append(
            "perplexity on {} held-out tokens: torch {:.3f}, ".format(ppl["tokens"], ppl["torch"])
            + ", ".join(f"{k} {ppl[k]:.3f}" for k in ("fp32", "int8") if k in ppl)
        )
    return "\n".join(rows)


def _fail_if(parity: dict[str, Any], name: str, out_dir: Path) -> None:
    p = parity[name]
    if p["passed"]:
        return
    hint = (
        "export without int8 (--no-int8 / export.lm.int8=false) or keep more MatMuls in fp32 "
        "(export.lm.exclude, e.g. 'lm_head')"
        if name == "int8"
        else "the ONNX graph computes something else than PyTorch; report it"
    )
    raise ExportError(
        f"{name} decoder does not match PyTorch (nothing written to {out_dir}):\n"
        f"{lm_parity_table(parity)}\n{hint}",
        stage=name,
        parity=parity,
    )
