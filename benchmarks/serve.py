"""Serving throughput and latency: paperops vs the reports' per-request PyTorch endpoint, one run.

For each model the same papers (validation split, one paper per request, as the reports did) go
through:
- `paperops serve` (ONNX Runtime int8 with micro-batching for the embedding model; sklearn for
  tfidf), driven at 1, 8, 32 and 64 concurrent clients by `benchmarks/loadgen.py` (closed loop,
  bounded by request count and time, its own process);
- the naive baseline `benchmarks/naive_server.py` (PyTorch, batch of one per request, FastAPI's
  thread pool) at the same levels;
- the ceilings: the runtime's offline throughput at batch 32 and its batch-1 latency (no HTTP,
  fresh process), and `POST /v1/noop` on the same paperops server (validation + HTTP, no model).

Everything listens on 127.0.0.1. Writes benchmarks/results/serve.json:
`{"rows": [{"model", "backend", "concurrency", "requests", "rps", "p50_ms", "p95_ms", "p99_ms",
"errors"}, ...], "goals": [...], ...}`. Knobs (env): PAPEROPS_BENCH_SERVE_SECONDS (per level,
default 20), PAPEROPS_BENCH_SERVE_LEVELS (default 1,8,32,64).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, measure, run_stamp, write_result
from paperops.serve.launcher import free_port, running_process, running_server

LEVELS = [int(x) for x in os.environ.get("PAPEROPS_BENCH_SERVE_LEVELS", "1,8,32,64").split(",")]
SECONDS = float(os.environ.get("PAPEROPS_BENCH_SERVE_SECONDS", "20"))
N_PAPERS = 1000
BIN = Path(sys.executable).parent


def _load(url: str, bodies: Path, concurrency: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        url,
        "--bodies",
        str(bodies),
        "--concurrency",
        str(concurrency),
        "--requests",
        "100000",
        "--duration",
        str(SECONDS),
        "--warmup",
        # not counted: opens the connections and lets ONNX Runtime's arena reach the largest
        # shapes (a 4-request warm-up left the 1-client p50 at 12 ms vs 8.7 ms after 8+)
        str(max(32, 2 * concurrency)),
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 300)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(model: str, backend: str, r: dict[str, Any]) -> dict[str, Any]:
    keys = ("concurrency", "requests", "rps", "p50_ms", "p95_ms", "p99_ms", "errors")
    row = {"model": model, "backend": backend} | {k: r[k] for k in keys}
    print(
        f"  {model:9s} {backend:15s} c={r['concurrency']:>2} {r['rps']:8.1f} req/s "
        f"p50 {r['p50_ms']} p95 {r['p95_ms']} p99 {r['p99_ms']} errors {r['errors']}",
        flush=True,
    )
    return row


def _papers(processed: Path) -> list[dict[str, str]]:
    import pandas as pd

    df = pd.read_parquet(processed / "val.parquet", columns=["title", "abstract"])
    df = df.sample(n=min(N_PAPERS, len(df)), random_state=0)
    return [{"title": t, "abstract": a} for t, a in zip(df.title, df.abstract, strict=True)]


def _write_bodies(papers: list[dict[str, str]], work: Path) -> dict[str, Path]:
    paths = {"classify": work / "classify.jsonl", "predict": work / "predict.jsonl"}
    paths["classify"].write_text(
        "\n".join(json.dumps({"papers": [p], "top_k": 3}) for p in papers) + "\n"
    )
    paths["predict"].write_text("\n".join(json.dumps(p) for p in papers) + "\n")
    return paths


def _offline(model_dir: Path, papers_file: Path, threads: int) -> dict[str, Any]:
    """The runtime alone in a fresh process: batch-1 latency and batch-32 throughput."""
    return measure(
        f"""
        import json, time, numpy as np
        from paperops.data.text import model_text
        from paperops.inference.predictor import load_predictor
        p = load_predictor({str(model_dir)!r}, threads={threads})
        papers = [json.loads(l) for l in open({str(papers_file)!r})]
        texts = [model_text(x["title"], x["abstract"]) for x in papers]
        for t in texts[:8]:
            p.predict_texts([t])
        lat = []
        for t in texts[:200]:
            t0 = time.perf_counter(); p.predict_texts([t]); lat.append(time.perf_counter() - t0)
            if sum(lat) > 30: break
        n, t0 = 0, time.perf_counter()
        for i in range(0, len(texts), 32):
            p.predict_texts(texts[i:i + 32]); n += len(texts[i:i + 32])
            if time.perf_counter() - t0 > 40: break
        extra = {{"runtime": p.info.runtime, "batch1_p50_ms": float(np.median(lat) * 1000),
                  "batch32_texts_per_s": n / (time.perf_counter() - t0)}}
        """
    )["extra"]


def _ensure_export(bundle: Path, export_dir: Path) -> None:
    if (export_dir / "export.json").is_file():
        return
    print(f"exporting {bundle} -> {export_dir} ...", flush=True)
    subprocess.run(
        [str(BIN / "paperops"), "export", "experiment=demo_embedding",
         f"export.model_dir={bundle}", f"export.output_dir={export_dir}"],
        cwd=REPO, check=True,
    )  # fmt: skip


def _paperops_args(model_dir: Path, work: Path, name: str) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "serve.benchmark_endpoints=true",
        f"serve.request_log.url=sqlite:///{work}/{name}-requests.db",
    ]


def run() -> dict[str, Any]:
    processed = REPO / "data" / "processed"
    models = {
        "embedding": (REPO / "models" / "demo_embedding", REPO / "models" / "demo_embedding_onnx"),
        "tfidf": (REPO / "models" / "tfidf", REPO / "models" / "tfidf"),
    }
    for bundle, _ in models.values():
        if not (bundle / "model.json").is_file():
            raise SystemExit(f"{bundle} is missing: run `make demo` (dvc repro) first")
    _ensure_export(*models["embedding"])
    rows: list[dict[str, Any]] = []
    offline: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="paperops-bench-serve-") as tmp:
        work = Path(tmp)
        bodies = _write_bodies(_papers(processed), work)
        for name, (bundle, served) in models.items():
            print(f"{name}: offline ceiling ...", flush=True)
            off = _offline(served, bodies["predict"], threads=2)
            offline[name] = off
            rows.append(
                {"model": name, "backend": "offline-ceiling", "concurrency": 32,
                 "requests": None, "rps": round(off["batch32_texts_per_s"], 2),
                 "p50_ms": round(off["batch1_p50_ms"], 2), "p95_ms": None, "p99_ms": None,
                 "errors": 0}
            )  # fmt: skip
            args = _paperops_args(served, work, name)
            with running_server(args, log_path=work / f"{name}.log", ready_timeout=600) as base:
                for c in LEVELS:
                    rows.append(
                        _row(
                            name,
                            off["runtime"],
                            _load(f"{base}/v1/classify", bodies["classify"], c),
                        )
                    )
                if name == "tfidf":  # the HTTP ceiling, same server, same body
                    for c in LEVELS:
                        rows.append(
                            _row("noop", "offline-ceiling",
                                 _load(f"{base}/v1/noop", bodies["classify"], c))
                        )  # fmt: skip
            port = free_port()
            naive = [sys.executable, "-m", "benchmarks.naive_server", "--model", str(bundle),
                     "--port", str(port)]  # fmt: skip
            with running_process(
                naive, f"http://127.0.0.1:{port}", ready_path="/healthz", cwd=REPO,
                log_path=work / f"{name}-naive.log", ready_timeout=600,
            ) as base:  # fmt: skip
                for c in LEVELS:
                    rows.append(
                        _row(name, "naive-torch", _load(f"{base}/predict", bodies["predict"], c))
                    )
    export = json.loads((models["embedding"][1] / "export.json").read_text())
    result = {
        **run_stamp(),
        "seconds_per_level": SECONDS,
        "offline": offline,
        "export_parity": export.get("parity"),
        "rows": rows,
    }
    result["goals"] = goals(result)
    write_result("serve", result)
    return result


def _get(rows: list[dict[str, Any]], model: str, backend: str, c: int) -> dict[str, Any] | None:
    for r in rows:
        if r["model"] == model and r["backend"] == backend and r["concurrency"] == c:
            return r
    return None


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows, off = r["rows"], r["offline"]
    emb_rt = off["embedding"]["runtime"]
    out = []

    def add(goal: str, target: str, value: float | None, met: bool | None) -> None:
        out.append({"goal": goal, "target": target, "value": value, "met": met})

    e32 = _get(rows, "embedding", emb_rt, 32)
    n32 = _get(rows, "embedding", "naive-torch", 32)
    ceil = off["embedding"]["batch32_texts_per_s"]
    if e32:
        v = e32["rps"] / ceil
        add("embedding @32 clients vs offline batched ceiling", ">= 0.85", round(v, 3), v >= 0.85)
    if e32 and n32:
        v = e32["rps"] / n32["rps"]
        add("embedding @32 clients vs naive PyTorch endpoint", ">= 2.5x", round(v, 2), v >= 2.5)
    e1 = _get(rows, "embedding", emb_rt, 1)
    if e1:
        v = e1["p50_ms"] / off["embedding"]["batch1_p50_ms"]
        add("single-client p50 vs runtime batch-1 latency", "< 1.2x", round(v, 3), v < 1.2)
    best = None
    for c in LEVELS:
        t, n = (
            _get(rows, "tfidf", off["tfidf"]["runtime"], c),
            _get(rows, "noop", "offline-ceiling", c),
        )
        if t and n:
            v = t["rps"] / n["rps"]
            best = v if best is None else max(best, v)
            add(f"tfidf vs no-op endpoint @{c} clients", ">= 0.70", round(v, 3), v >= 0.70)
    errors = sum(int(x["errors"] or 0) for x in rows)
    add("errors at every level (all backends)", "0", errors, errors == 0)
    int8 = (r.get("export_parity") or {}).get("int8") or {}
    if int8:
        v = int8.get("agreement")
        v = None if v is None else round(float(v), 4)
        add(f"ONNX int8 top-1 agreement with PyTorch (val, n={int8.get('n')})", ">= 0.995", v,
            v is not None and v >= 0.995)  # fmt: skip
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "## Serving (`benchmarks/serve.py`)",
        "",
        f"Measured {r['measured']} on {r['machine']}; loopback HTTP, one paper per request "
        "(validation papers), closed-loop clients in a separate process, "
        f"{r['seconds_per_level']:.0f} s per level. `offline-ceiling` rows: the runtime alone in "
        "a fresh process (req/s = texts/s "
        "at batch 32, p50 = batch-1 latency) and `noop`: `POST /v1/noop` on the same server "
        "(validation + HTTP, no model). `naive-torch`: the reports' per-request PyTorch endpoint "
        "(`benchmarks/naive_server.py`), same bundle.",
        "",
        "| model | backend | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v: Any) -> str:
        return "–" if v is None else (f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")

    for x in r["rows"]:
        lines.append(
            f"| {x['model']} | {x['backend']} | {x['concurrency']} | {f(x['requests'])} "
            f"| {f(x['rps'])} | {f(x['p50_ms'])} | {f(x['p95_ms'])} | {f(x['p99_ms'])} "
            f"| {x['errors']} |"
        )
    lines += ["", "| goal (issue #5) | target | measured | met |", "|---|---|---|---|"]
    for g in goals(r):  # recomputed, so a re-render picks up changes to the goals
        met = "yes" if g["met"] else "**no**"
        lines.append(f"| {g['goal']} | {g['target']} | {g['value']} | {met} |")
    lines += [
        "",
        "Reading the table. The embedding model is compute-bound: micro-batching keeps the worker "
        "busy, so throughput sits near the runtime's own batched ceiling and far above the "
        "per-request endpoint, whose threads oversubscribe the 2 cores. tfidf cannot reach 70% "
        "of the no-op endpoint here: its offline ceiling (the model alone, batch 32, no HTTP) is "
        "already well under the no-op rate, because scikit-learn's `TfidfVectorizer.transform` "
        "costs ~0.3 ms per abstract (mostly its Python loop over 500k uni/bigram features); "
        "a compiled vectorizer is the way to close that gap. Still, paperops serves tfidf at "
        "~1.6x the naive endpoint at 32 clients.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    res = run()
    print(markdown(res))
