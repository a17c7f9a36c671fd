"""`paperops monitor drift`: a window of logged requests against the training reference.

Five checks, each a score with a threshold (configs/monitor/default.yaml):
- length: PSI of characters per paper (title + abstract);
- vocabulary: Jensen-Shannon divergence of word frequencies (top reference words + the rest);
- embedding: ROC AUC of a domain classifier told to separate window from reference embeddings
  (0.5 = it cannot), with the MMD permutation p-value beside it;
- label: PSI of the predicted label mix against the reference's label mix (chi-square beside it);
- accuracy: when users sent feedback, how far live accuracy falls below the accuracy the
  calibrated confidence promised for the same papers.
The report is JSON (the contract the API, Grafana and the retrain path read) plus HTML.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperops import __version__
from paperops.data.text import model_text
from paperops.monitor.checks import (
    _check,
    check_accuracy,
    check_embedding,
    check_label,
    check_length,
    check_vocabulary,
)
from paperops.monitor.config import CHECKS, DriftConfig, DriftError, Reference, Window, parse_window
from paperops.monitor.report import write_reports

log = logging.getLogger(__name__)

FORMAT = 1


# --- inputs --------------------------------------------------------------------------------


def load_reference(cfg: DriftConfig) -> Reference:

    path = Path(cfg.processed_dir) / f"{cfg.reference_split}.parquet"
    if not path.is_file():
        raise DriftError(
            f"no reference split at {path}: run `paperops data prepare` (or set "
            "monitor.reference.processed_dir)"
        )
    df = pd.read_parquet(path, columns=["title", "abstract", "label"])
    if len(df) < 20:
        raise DriftError(f"the reference split {path} has {len(df)} rows; drift needs >= 20")
    counts = df["label"].value_counts()
    share = {str(k): float(v) / len(df) for k, v in counts.items()}
    shuffled = df.sample(frac=1.0, random_state=cfg.seed)
    n_null = min(cfg.null_papers, len(df) // 3)  # small splits: a third stays the null pool
    n_ref = min(cfg.reference_max_papers, len(df) - n_null)
    sample, null = shuffled.iloc[:n_ref], shuffled.iloc[n_ref : n_ref + n_null]

    def texts(d: pd.DataFrame) -> list[str]:
        return [model_text(t, a) for t, a in zip(d["title"], d["abstract"], strict=True)]

    def chars(d: pd.DataFrame) -> np.ndarray:
        return (d["title"].str.len() + d["abstract"].str.len()).to_numpy(float)

    return Reference(
        texts(sample), chars(sample), texts(null), chars(null), share, len(df), str(path)
    )


def load_window(cfg: DriftConfig, window: str | None = None, now: float | None = None) -> Window:
    # deferred: pulls sqlalchemy
    from paperops.requestlog.queries import read_predictions
    from paperops.requestlog.schema import RequestLogError

    spec = window or cfg.window
    since, until = parse_window(spec, time.time() if now is None else now)
    try:
        rows = read_predictions(cfg.request_log, since=since, until=until, limit=cfg.max_papers)
    except (FileNotFoundError, RequestLogError) as e:
        raise DriftError(str(e)) from None
    return Window(rows, since, until, spec)


# --- checks --------------------------------------------------------------------------------


# --- the job -------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def compute(cfg: DriftConfig, ref: Reference, win: Window) -> dict[str, Any]:
    """The drift report (a JSON-ready dict) of `win` against `ref`."""
    started = time.perf_counter()
    n = len(win.rows)
    versions = Counter(str(r["model_version"]) for r in win.rows)
    report: dict[str, Any] = {
        "format": FORMAT,
        "paperops_version": __version__,
        "ts": time.time(),
        "created_at": _iso(time.time()),
        "window": {
            "spec": win.spec,
            "since": _iso(win.since),
            "until": _iso(win.until),
            "papers": n,
            "with_text": sum(r["title"] is not None for r in win.rows),
            "with_feedback": sum(r.get("feedback_label") is not None for r in win.rows),
            "model_versions": dict(versions),
            "first": _iso(win.rows[0]["ts"]) if n else None,
            "last": _iso(win.rows[-1]["ts"]) if n else None,
        },
        "reference": {"source": ref.source, "rows": ref.rows, "sample": len(ref.texts)},
        "thresholds": dict(cfg.thresholds),
    }
    if n < cfg.min_papers:
        reason = f"{n} logged papers in the window (< monitor.min_papers {cfg.min_papers})"
        report["status"] = "insufficient_data"
        report["checks"] = {c: _check(c, cfg, None, "", reason=reason) for c in CHECKS}
    else:
        win_texts = win.texts
        report["status"] = "ok"
        report["checks"] = {
            "length": check_length(cfg, ref, win),
            "vocabulary": check_vocabulary(cfg, ref, win_texts),
            "embedding": check_embedding(cfg, ref, win_texts),
            "label": check_label(cfg, ref, win),
            "accuracy": check_accuracy(cfg, win),
        }
    report["drifted_checks"] = [c for c, v in report["checks"].items() if v["drifted"]]
    report["drifted"] = bool(report["drifted_checks"])
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def run_drift(cfg: DriftConfig, window: str | None = None) -> dict[str, Any]:
    """Load, compute, write reports (JSON + HTML) and store the report for the API."""

    ref = load_reference(cfg)
    win = load_window(cfg, window)
    log.info(
        "drift: %d logged papers (window %s) vs %d reference papers",
        len(win.rows),
        win.spec,
        len(ref.texts),
    )
    report = compute(cfg, ref, win)
    write_reports(report, Path(cfg.output_dir), ref=ref, win=win)
    if cfg.store:
        # deferred: pulls sqlalchemy
        from paperops.requestlog.queries import save_drift_report
        from paperops.requestlog.schema import RequestLogError

        try:
            save_drift_report(cfg.request_log, report)
        except RequestLogError as e:
            raise DriftError(f"{e} (the reports were written to {cfg.output_dir})") from None
    return report
