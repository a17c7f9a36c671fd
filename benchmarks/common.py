"""Helpers shared by benchmarks: run a measurement in a fresh process, report time and peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("PAPEROPS_SHARED", REPO.parent / "shared"))

_WRAPPER = """
import json, resource, time
t0 = time.perf_counter()
{body}
print("@@RESULT@@" + json.dumps({{"seconds": time.perf_counter() - t0,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "extra": extra if "extra" in dir() else None}}))
"""


def measure(body: str, timeout: int = 900) -> dict:
    """Run `body` in a new interpreter (so peak RSS is its own) and return seconds + peak_rss_mb.

    `body` may set a variable `extra` (JSON-serialisable) to return more figures.
    """
    code = _WRAPPER.format(body=textwrap.dedent(body))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark body failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@"))
    return json.loads(line.removeprefix("@@RESULT@@"))


def write_result(name: str, data: object) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def run_stamp(device: str | None = None) -> dict[str, str]:
    """When and on what a result was measured: the page quotes it next to the figures."""
    import platform
    from datetime import UTC, datetime

    where = f"{device}, " if device else ""
    return {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {where}"
        f"python {platform.python_version()}",
    }
