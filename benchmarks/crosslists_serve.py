"""What serving cross-lists costs: /v1/classify with and without `cross_lists=true`, one server,
same run, 32 closed-loop clients (`benchmarks/loadgen.py`, its own process).

The served model is the cross-list benchmark's stratified bundle (tfidf over fine categories
with its head, `benchmarks/crosslists.py`), as `paperops serve --model` serves it: micro-batching
and the SQLite request log on, one paper per request (the reports' shape). Rounds alternate
without / with / with / without ... so a drift of the machine (the other core's load, the page
cache) falls on both sides alike; the ratio is total requests answered with cross-lists over
total without, in the same number of equal rounds.

Run alone: `python -m benchmarks.crosslists_serve` updates `throughput_ratio` and `serving` in
benchmarks/results/crosslists.json without re-running the quality part. Knobs (env):
PAPEROPS_BENCH_SERVE_SECONDS (per round, default 20 as in benchmarks/serve.py),
PAPEROPS_CROSSLISTS_ROUNDS (default 3).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, run_stamp, write_result
from benchmarks.serve import SECONDS, _load
from paperops.serve.launcher import running_server

CLIENTS = 32  # the level
ROUNDS = int(os.environ.get("PAPEROPS_CROSSLISTS_ROUNDS", "3"))
N_PAPERS = 1000


def _bodies(processed: Path, work: Path) -> dict[bool, Path]:
    import pandas as pd

    df = pd.read_parquet(processed / "test.parquet", columns=["title", "abstract"])
    df = df.sample(n=min(N_PAPERS, len(df)), random_state=0)
    papers = [{"title": t, "abstract": a} for t, a in zip(df.title, df.abstract, strict=True)]
    out = {}
    for flag in (False, True):
        path = work / f"bodies-{'with' if flag else 'without'}.jsonl"
        extra = {"cross_lists": True} if flag else {}
        path.write_text("\n".join(json.dumps({"papers": [p], "top_k": 3} | extra)
                                  for p in papers) + "\n")  # fmt: skip
        out[flag] = path
    return out


def measure(bundle: Path, processed: Path) -> dict[str, Any]:
    """Both sides at CLIENTS clients in alternating rounds on one server."""
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="paperops-bench-crosslists-") as tmp:
        work = Path(tmp)
        bodies = _bodies(processed, work)
        args = ["--model", str(bundle), f"serve.request_log.url=sqlite:///{work}/requests.db"]
        with running_server(args, log_path=work / "server.log", ready_timeout=600) as base:
            url = f"{base}/v1/classify"
            order = []  # without, with | with, without | ...: neither side always goes first
            for i in range(ROUNDS):
                order += [False, True] if i % 2 == 0 else [True, False]
            for flag in order:
                r = _load(url, bodies[flag], CLIENTS)
                rounds.append({"cross_lists": flag} | r)
                print(f"  cross_lists={flag!s:5s} {r['rps']:8.1f} req/s p50 {r['p50_ms']} ms "
                      f"p99 {r['p99_ms']} ms errors {r['errors']}", flush=True)  # fmt: skip
    side = {f: [r for r in rounds if r["cross_lists"] is f] for f in (False, True)}
    total = {f: sum(r["requests"] for r in side[f]) for f in side}
    rps = {f: [r["rps"] for r in side[f]] for f in side}
    return {
        "throughput_ratio": round(total[True] / total[False], 3),
        "clients": CLIENTS,
        "rounds": ROUNDS,
        "seconds_per_round": SECONDS,
        "rps_without": rps[False],
        "rps_with": rps[True],
        "p50_ms": {"without": _mean(side[False], "p50_ms"), "with": _mean(side[True], "p50_ms")},
        "p99_ms": {"without": _mean(side[False], "p99_ms"), "with": _mean(side[True], "p99_ms")},
        "errors": sum(r["errors"] for r in rounds),
        "order": ["with" if r["cross_lists"] else "without" for r in rounds],
        "served": str(bundle),
        **run_stamp(),
    }


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return round(sum(r[key] for r in rows) / len(rows), 2)


def main() -> None:
    from benchmarks.crosslists import WORK

    bundle, processed = WORK / "stratified" / "bundle", WORK / "stratified" / "processed"
    if not (bundle / "crosslists").is_dir():
        raise SystemExit(f"{bundle} has no head: run `python benchmarks/run.py crosslists` first")
    serving = measure(bundle, processed)
    path = RESULTS / "crosslists.json"
    result = json.loads(path.read_text())
    result["throughput_ratio"] = serving["throughput_ratio"]
    result["serving"] = serving
    result.pop("not_measured", None)
    write_result("crosslists", result)
    print(json.dumps({k: serving[k] for k in ("throughput_ratio", "rps_without", "rps_with")}))


if __name__ == "__main__":
    main()
