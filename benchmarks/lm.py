"""The language model: held-out perplexity per corpus, and generation throughput over HTTP.

Quality: GPT-2 from scratch on the medical questions (the first report's data) and on arXiv
abstracts, trained by the same `paperops train` the pipeline runs (untracked, in a temp dir), and
`distilgpt2` fine-tuned where its weights exist locally (they do not on these machines: recorded
as skipped). Throughput: tokens/s for 1 and 8 concurrent `/v1/generate` requests of 64 new
tokens, against the naive `model.generate(use_cache=False)` endpoint, in the same run.

Env: PAPEROPS_BENCH_LM_PARTS=quality,throughput (default both; results merge into lm.json),
PAPEROPS_BENCH_SCALE=cpu|full (full: more epochs and rows, for a GPU).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, RESULTS, run_stamp, write_result
from paperops.serve.launcher import free_port, running_process, running_server

NEW_TOKENS = 64
LEVELS = (1, 8)
REQUESTS = {1: 32, 8: 128}  # per level, and at most SECONDS of wall time
SECONDS = 60.0
PROMPTS = [
    "Can I take ibuprofen",
    "What are the symptoms of",
    "My son has a fever and",
    "Is it safe to",
    "How long does it take for",
    "What is the best treatment for",
    "I have a pain in my",
    "Should I be worried about",
]
SCALES: dict[str, dict[str, list[str]]] = {
    "cpu": {
        "scratch_mqp": ["experiment=lm_mqp", "trainer.max_epochs=15"],
        "scratch_arxiv": [
            "experiment=lm_arxiv",
            "trainer.max_epochs=2",
            "train.max_rows={train: 4000, val: 400, test: 400}",
        ],
        "distilgpt2_mqp": ["experiment=lm_mqp", "model.pretrained=distilgpt2", "model.lr=5e-5"],
    },
    "full": {
        "scratch_mqp": ["experiment=lm_mqp", "trainer=gpu"],
        "scratch_arxiv": [
            "experiment=lm_arxiv",
            "trainer=gpu",
            "model.n_layer=6",
            "model.n_embd=384",
            "model.n_head=6",
        ],
        "distilgpt2_mqp": [
            "experiment=lm_mqp",
            "trainer=gpu",
            "model.pretrained=distilgpt2",
            "model.lr=5e-5",
        ],
    },
}


def _quality(work: Path, scale: str) -> dict[str, Any]:
    from paperops.config import load_config
    from paperops.data.corpus import CorpusConfig, prepare_corpus
    from paperops.evaluate import evaluate_bundle
    from paperops.models.base import ModelLoadError
    from paperops.train import train

    models: dict[str, Any] = {}
    prepared: dict[str, Path] = {}
    for name, overrides in SCALES[scale].items():
        base = [
            *overrides,
            f"paths.data={work / 'data'}",
            f"data.output_dir={REPO / 'data' / 'processed'}",
            "train.track=false",
            f"train.output_dir={work / 'models' / name}",
            f"train.run_name=bench_{name}",
            "trainer.enable_progress_bar=false",
        ]
        cfg = load_config(base)
        corpus = str(cfg.corpus.name)
        if corpus not in prepared:
            prepared[corpus] = prepare_corpus(CorpusConfig.from_config(cfg.corpus), 42).output_dir
        print(f"lm quality: {name} ({corpus}) ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = train(cfg)
        except ModelLoadError as e:
            models[name] = {"dataset": corpus, "skipped": str(e).split(" (")[0]}
            print(f"  skipped: {models[name]['skipped']}", flush=True)
            continue
        assert result is not None
        m = evaluate_bundle(cfg, result.bundle_dir, work / "reports" / name, log_to_mlflow=False)
        fs = result.fit_summary
        models[name] = {
            "dataset": corpus,
            "val_perplexity": round(result.val_metrics["val_perplexity"], 3),
            "val_loss": round(result.val_metrics["val_loss"], 4),
            "test_perplexity": round(m["perplexity"], 3),
            "test_bits_per_byte": round(m["bits_per_byte"], 4),
            "unigram_perplexity": round(m["unigram_perplexity"], 3),
            "params": m["params"],
            "train_seconds": round(result.train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "epochs": fs.get("epochs_run"),
            "best_epoch": fs.get("best_epoch"),
            "train_tokens_per_s": fs.get("tokens_per_s"),
            "overrides": overrides,
            "bundle": str(result.bundle_dir),
        }
        print(f"  {models[name]}", flush=True)
    return models


async def _drive(url: str, concurrency: int, naive: bool) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, REQUESTS[concurrency] requests or SECONDS, first."""
    import aiohttp

    total = REQUESTS[concurrency]
    sent = 0
    tokens, latencies, ttfts, errors = 0, [], [], 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(i: int) -> None:
            nonlocal tokens, errors
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": NEW_TOKENS,
                    "temperature": 0.8, "top_p": 0.95, "seed": i, "ignore_eos": True}  # fmt: skip
            t0 = time.perf_counter()
            async with session.post(url, json=body) as resp:
                data = await resp.json()
                if resp.status != 200:
                    errors += 1
                    return
            latencies.append(time.perf_counter() - t0)
            tokens += int(data["tokens"]["generated"])
            if not naive:
                ttfts.append(float(data["timing"]["ttft_ms"]))

        await one(10_000)  # warm-up, not counted
        tokens, latencies, ttfts = 0, [], []
        start = time.perf_counter()
        deadline = start + SECONDS

        async def client() -> None:
            nonlocal sent
            while sent < total and time.perf_counter() < deadline:
                sent += 1
                await one(sent)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    import numpy as np

    return {
        "requests": len(latencies),
        "errors": errors,
        "generated_tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "ttft_p50_ms": round(float(np.percentile(ttfts, 50)), 1) if ttfts else None,
    }


def _throughput(work: Path, model_dir: Path, classifier: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    backends = ["torch"]
    if (model_dir.parent / f"{model_dir.name}_onnx" / "export.json").is_file():
        backends += ["onnx", "onnx-int8"]
    for backend in backends:
        gen_dir = model_dir if backend == "torch" else model_dir.parent / f"{model_dir.name}_onnx"
        args = ["--model", str(classifier), f"serve.generator.model={gen_dir}",
                f"serve.generator.runtime={backend}", "serve.generator.enabled=true",
                f"serve.request_log.url=sqlite:///{work}/lm-{backend}.db"]  # fmt: skip
        with running_server(args, log_path=work / f"lm-{backend}.log", ready_timeout=300) as url:
            for c in LEVELS:
                r = asyncio.run(_drive(f"{url}/v1/generate", c, naive=False))
                rows.append({"backend": f"paperops-{backend}", "concurrency": c, **r})
                print(f"  {rows[-1]}", flush=True)
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.naive_lm_server", "--model", str(model_dir),
           "--port", str(port)]  # fmt: skip
    with running_process(
        cmd, f"http://127.0.0.1:{port}", ready_path="/healthz", cwd=REPO,
        log_path=work / "naive-lm.log", ready_timeout=300,
    ) as url:  # fmt: skip
        for c in LEVELS:
            r = asyncio.run(_drive(f"{url}/infer", c, naive=True))
            rows.append({"backend": "naive-generate-no-cache", "concurrency": c, **r})
            print(f"  {rows[-1]}", flush=True)
    return rows


def run() -> dict[str, Any]:
    import torch

    parts = os.environ.get("PAPEROPS_BENCH_LM_PARTS", "quality,throughput").split(",")
    scale = os.environ.get("PAPEROPS_BENCH_SCALE") or (
        "full" if torch.cuda.is_available() else "cpu"
    )
    previous = (
        json.loads((RESULTS / "lm.json").read_text()) if (RESULTS / "lm.json").is_file() else {}
    )
    result: dict[str, Any] = {
        **run_stamp("cuda" if torch.cuda.is_available() else "cpu"),
        "models": previous.get("models", {}),
        "throughput": previous.get("throughput", []),
    }
    with tempfile.TemporaryDirectory(prefix="paperops-bench-lm-") as tmp:
        work = Path(tmp)
        if "quality" in parts:
            result["models"] = _quality(work, scale)
            result["scale"] = scale
        if "throughput" in parts:
            model_dir = REPO / "models" / "demo_lm"
            classifier = REPO / "models" / "tfidf"
            for p in (model_dir, classifier):
                if not (p / "model.json").is_file():
                    raise SystemExit(f"{p} is missing: run `make demo` (dvc repro) first")
            result["throughput"] = _throughput(work, model_dir, classifier)
            result["throughput_model"] = str(model_dir.relative_to(REPO))
            result["new_tokens"] = NEW_TOKENS
    write_result("lm", result)
    return result


def _ratio(rows: list[dict[str, Any]], backend: str, c: int) -> float | None:
    def tps(b: str) -> float | None:
        return next(
            (r["tokens_per_s"] for r in rows if r["backend"] == b and r["concurrency"] == c), None
        )

    ours, naive = tps(backend), tps("naive-generate-no-cache")
    return round(ours / naive, 2) if ours and naive else None


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "## Language model (`benchmarks/lm.py`)",
        "",
        f"Measured {r.get('measured')} on {r.get('machine')}. Perplexity is per token of each "
        "model's own tokenizer; bits per byte compares across tokenizers. The unigram column is "
        "the same tokenizer's token frequencies: the floor a trained model must beat.",
        "",
        "| model | corpus | params | epochs (best) | train s | val ppl | test ppl | bits/byte "
        "| unigram ppl |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r.get("models", {}).items():
        if "skipped" in m:
            lines.append(f"| {name} | {m['dataset']} | skipped: {m['skipped']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {m['dataset']} | {m['params'] / 1e6:.2f}M | {m['epochs']} "
            f"({m['best_epoch']}) | {m['train_seconds']:.0f} | {m['val_perplexity']:.2f} | "
            f"{m['test_perplexity']:.2f} | {m['test_bits_per_byte']:.3f} | "
            f"{m['unigram_perplexity']:.1f} |"
        )
    lines += [
        "",
        "Reading the table. From scratch on 2 CPU cores, the 4.2M-parameter GPT-2 reaches a test "
        "perplexity about 5x below the unigram floor on the medical questions within 4 minutes, "
        "then overfits: the corpus is ~110k tokens (3,649 questions), so early stopping keeps an "
        "early epoch and more epochs do not help (the demo's 6 epochs give a similar validation "
        "perplexity, 122). On abstracts (4,000 of them, ~1.1M tokens, 2 epochs in 10 minutes) it "
        "learns more per byte (1.58 vs 1.90 bits/byte). The first report's DistilGPT2 fine-tune "
        "reached an eval loss of ~3.05 nats per GPT-2 token (perplexity ~21); GPT-2's tokenizer "
        "averages roughly 4 bytes per token on English, so that is roughly 1.1 bits/byte "
        "(an estimate from its loss, not a measurement here): a pretrained model is still far "
        "ahead of anything trained from scratch on 110k tokens. No pretrained GPT-2 weights and "
        "no GPU exist on these machines, so the `distilgpt2_mqp` row and the GPU scale "
        "(`PAPEROPS_BENCH_SCALE=full`: 6 layers x 384 dims on all abstracts with bf16) are not "
        "measured; the code paths are tested with a local tiny GPT-2 (`model.pretrained=<dir>`).",
    ]
    rows = r.get("throughput", [])
    if rows:
        lines += [
            "",
            f"Generation throughput of `{r.get('throughput_model')}`: {r.get('new_tokens')} new "
            "tokens per request, closed-loop clients over HTTP on loopback, the naive endpoint "
            "(`model.generate(use_cache=False)` per request) in the same run. Every request "
            "generates exactly 64 tokens (`ignore_eos`; the naive side uses `min_new_tokens`), "
            "so tokens/s measures the same work on both sides. paperops decodes concurrent "
            "requests as one batch per step with the KV cache; `onnx-int8` is what "
            "`serve.generator.runtime=auto` serves.",
            "",
            "| backend | concurrent | requests | tokens/s | vs naive | p50 ms | TTFT p50 ms "
            "| errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            ratio = _ratio(rows, row["backend"], row["concurrency"])
            lines.append(
                f"| {row['backend']} | {row['concurrency']} | {row['requests']} | "
                f"{row['tokens_per_s']:.1f} | {'' if ratio is None else f'{ratio:.2f}x'} | "
                f"{row['p50_ms']:.0f} | {row['ttft_p50_ms'] or ''} | {row['errors']} |"
            )
    return "\n".join(lines) + "\n"
