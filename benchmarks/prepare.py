"""Data preparation on the 113k-paper dev file: time and peak memory, against the naive baseline.

Baseline: what the course reports did, loading the whole JSON-lines file into pandas
(`pd.read_json(lines=True)`), measured in the same run. Targets (issue #3): full prepare under
180 s and 4 GB peak RSS on 2 cores.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile

from benchmarks.common import SHARED, measure, write_result

RAW = SHARED / "data" / "arxiv" / "arxiv-metadata.jsonl.gz"


def run() -> dict:
    out = tempfile.mkdtemp(prefix="paperops-bench-")
    rows = {
        "naive_read": measure(f"""
            import pandas as pd
            df = pd.read_json({str(RAW)!r}, lines=True, compression="gzip")
            extra = {{"rows": len(df)}}
        """),
        "streaming_read": measure(f"""
            from paperops.data.sources import iter_arxiv_jsonl
            n = sum(1 for _ in iter_arxiv_jsonl({str(RAW)!r}))
            extra = {{"rows": n}}
        """),
        "full_prepare": measure(f"""
            from paperops.data.prepare import PrepareConfig, prepare
            r = prepare(PrepareConfig(raw_paths={str(RAW)!r}, output_dir={out!r} + "/processed"))
            extra = {{"rows": sum(r.counts.values()), "labels": len(r.labels)}}
        """),
    }
    shutil.rmtree(out, ignore_errors=True)
    result = {
        "file": str(RAW.name),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "rows": rows,
    }
    write_result("prepare", result)
    return result


def markdown(result: dict) -> str:
    r = result["rows"]
    base, ours, full = r["naive_read"], r["streaming_read"], r["full_prepare"]
    lines = [
        "## Data preparation (`benchmarks/prepare.py`)",
        "",
        f"Dev file `{result['file']}` ({ours['extra']['rows']:,} papers), {result['cpu_count']} "
        "cores, each row measured in a fresh process in the same run.",
        "",
        "| step | rows | seconds | peak RSS (MB) | vs naive read: time | vs naive read: memory |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in (
        ("naive read: `pd.read_json(lines=True)` (baseline)", base),
        ("streaming reader (`iter_arxiv_jsonl`)", ours),
        ("full `prepare` (read, validate, clean, dedupe, split, write)", full),
    ):
        lines.append(
            f"| {name} | {row['extra']['rows']:,} | {row['seconds']:.1f} | "
            f"{row['peak_rss_mb']:,.0f} | {row['seconds'] / base['seconds']:.2f}x | "
            f"{row['peak_rss_mb'] / base['peak_rss_mb']:.2f}x |"
        )
    ok_t, ok_m = full["seconds"] < 180, full["peak_rss_mb"] < 4096
    lines += [
        "",
        f"Targets: full prepare < 180 s ({'met' if ok_t else 'MISSED'}: "
        f"{full['seconds']:.1f} s), peak < 4 GB ({'met' if ok_m else 'MISSED'}: "
        f"{full['peak_rss_mb']:,.0f} MB).",
        "",
    ]
    return "\n".join(lines)
