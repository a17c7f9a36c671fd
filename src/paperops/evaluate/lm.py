"""`paperops evaluate` for a language model: held-out perplexity, by slice, against baselines.

Perplexity depends on the tokenizer, so the report also gives bits per byte (tokenizer-free:
models with different vocabularies compare on it) and the perplexity of a unigram model with the
same tokenizer fitted on the training split: a trained LM that does not beat it learned nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from paperops.data.corpus import load_corpus
from paperops.inference.decoding import SamplingParams, TorchDecoder, generate
from paperops.io import atomic_write_text
from paperops.models.base import training_info
from paperops.models.lm import CausalLM, load_lm
from paperops.models.lm_module import LMConfig
from paperops.tracking.runs import log_evaluation

log = logging.getLogger(__name__)
LENGTH_SLICES = ((0, 16), (16, 32), (32, 64), (64, 10**9))  # document length in tokens


def bits_per_byte(loss: float, tokens: float, texts: list[str]) -> float:
    """Total next-token loss in bits over the UTF-8 bytes it predicted (+1 per end of text)."""
    n_bytes = sum(len(t.encode("utf-8")) + 1 for t in texts)
    return loss * tokens / (n_bytes * math.log(2))


def unigram_perplexity(lm: CausalLM, train: list[str], test: list[str]) -> float:
    """Add-one smoothed token frequencies from train, scored on test (eos counted per text)."""
    counts: Counter[int] = Counter()
    for t in train:
        counts.update(lm.encode(t))
    counts[lm.eos_token_id] += len(train)
    total = sum(counts.values()) + lm.vocab_size
    nll, n = 0.0, 0
    for t in test:
        for tok in [*lm.encode(t), lm.eos_token_id]:
            nll -= math.log((counts[tok] + 1) / total)
            n += 1
    return math.exp(nll / max(n, 1))


def length_slices(lm: CausalLM, texts: list[str], batch_size: int) -> list[dict[str, Any]]:
    lengths = np.array([len(lm.encode(t)) for t in texts])
    rows = []
    for lo, hi in LENGTH_SLICES:
        chosen = [t for t, n in zip(texts, lengths, strict=True) if lo <= n < hi]
        if not chosen:
            continue
        p = lm.perplexity(chosen, batch_size)
        name = f"{lo}-{hi - 1} tokens" if hi < 10**9 else f">={lo} tokens"
        rows.append(
            {"slice": name, "n": len(chosen), "loss": p["loss"], "perplexity": p["perplexity"]}
        )
    return rows


def evaluate_lm(
    cfg: DictConfig, model_dir: Path, report_dir: Path, *, log_to_mlflow: bool = True
) -> dict[str, Any]:
    """Test-split metrics of an LM bundle on the corpus it was trained on -> report_dir."""

    model_dir, report_dir = Path(model_dir), Path(report_dir)
    lm = load_lm(model_dir)
    info = training_info(model_dir)
    corpus_dir = Path(info.get("processed_dir") or cfg.corpus.output_dir)
    seed = int(info.get("seed", cfg.seed))
    max_rows = {k: v for k, v in (info.get("max_rows") or {}).items() if v is not None}
    data = load_corpus(corpus_dir, splits=("train", "test"), max_rows=max_rows, seed=seed)
    test = data["test"]
    config = LMConfig.from_dict(lm.meta["config"])
    overall = lm.perplexity(test, config.eval_batch_size)
    metrics: dict[str, Any] = {
        "model": str(model_dir),
        "corpus": lm.meta.get("corpus"),
        "n_test": len(test),
        "test_tokens": int(overall["tokens"]),
        "loss": overall["loss"],
        "perplexity": overall["perplexity"],
        "bits_per_byte": bits_per_byte(overall["loss"], overall["tokens"], test),
        "unigram_perplexity": unigram_perplexity(lm, data["train"], test),
        "val_perplexity": (info.get("val_metrics") or {}).get("val_perplexity"),
        "params": lm.params,
        "context_length": lm.context_length,
        "slices": length_slices(lm, test, config.eval_batch_size),
    }
    samples = sample_continuations(lm, config, seed)
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(report_dir / "samples.json", json.dumps(samples, indent=2) + "\n")
    atomic_write_text(report_dir / "report.md", _report(metrics, samples, info))
    log.info(
        "test perplexity %.2f (unigram %.2f)", metrics["perplexity"], metrics["unigram_perplexity"]
    )
    if log_to_mlflow and info.get("run_id"):
        log_evaluation(cfg, info["run_id"], metrics, report_dir)
    return metrics


def _report(metrics: dict[str, Any], samples: list[dict[str, Any]], info: dict[str, Any]) -> str:

    m = metrics
    lines = [
        f"# Language model report: {info.get('run_name') or Path(m['model']).name}",
        "",
        f"GPT-2, {m['params'] / 1e6:.2f}M parameters, context {m['context_length']} tokens, "
        f"corpus `{m['corpus']}`; {m['n_test']:,} held-out test texts "
        f"({m['test_tokens']:,} tokens).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test loss (nats/token) | {m['loss']:.4f} |",
        f"| test perplexity | {m['perplexity']:.2f} |",
        f"| bits per byte | {m['bits_per_byte']:.4f} |",
        f"| unigram perplexity (same tokenizer) | {m['unigram_perplexity']:.2f} |",
    ]
    if m.get("val_perplexity") is not None:
        lines.append(f"| validation perplexity | {m['val_perplexity']:.2f} |")
    lines += [
        "",
        "## By document length",
        "",
        "| slice | texts | loss | perplexity |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['slice']} | {s['n']:,} | {s['loss']:.4f} | {s['perplexity']:.2f} |"
        for s in m["slices"]
    ]
    lines += ["", "## Samples (fixed prompts, seeded)", "", samples_markdown(samples)]
    return "\n".join(lines)


SAMPLES_FILE = "samples.json"


def sample_continuations(lm: CausalLM, config: LMConfig, seed: int) -> list[dict[str, Any]]:
    """The fixed prompts' continuations (seeded): how the model writes, run after run."""

    backend = TorchDecoder(lm)
    out = []
    for i, prompt in enumerate(config.sample_prompts):
        params = SamplingParams(
            max_new_tokens=config.sample_max_new_tokens,
            temperature=config.sample_temperature,
            top_p=config.sample_top_p,
            seed=seed + i,
        )
        ids = list(generate(backend, lm.prompt_ids(prompt), params))
        out.append({"prompt": prompt, "continuation": lm.decode(ids), "seed": seed + i})
    return out


def samples_markdown(samples: list[dict[str, Any]]) -> str:
    lines = ["| prompt | continuation (seeded sample) |", "|---|---|"]
    for s in samples:
        cont = s["continuation"].replace("\n", " ").replace("|", "\\|")
        lines.append(f"| {s['prompt']} | {cont} |")
    return "\n".join(lines) + "\n"
