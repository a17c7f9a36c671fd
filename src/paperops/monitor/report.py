"""Drift reports on disk: drift.json (the contract), drift.html (a self-contained summary),
evidently.html (Evidently's data-drift report over per-paper features, when the monitor extra is
installed) and history.jsonl (one line per run, for trends)."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperops.io import atomic_write_text

log = logging.getLogger(__name__)


def write_reports(report: dict[str, Any], out: Path, *, ref: Any, win: Any) -> dict[str, str]:
    """Write the report files into `out`; returns {kind: path} (also recorded in the report)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "drift.json"), "html": str(out / "drift.html")}
    evidently_path = out / "evidently.html"
    if report.get("status") == "ok" and _write_evidently(evidently_path, ref, win):
        paths["evidently_html"] = str(evidently_path)
    report["files"] = paths
    rewrite_reports(report, out)
    with (out / "history.jsonl").open("a") as f:
        summary = {k: report[k] for k in ("created_at", "status", "drifted", "drifted_checks")}
        summary["scores"] = {c: v["score"] for c, v in report["checks"].items()}
        summary["papers"] = report["window"]["papers"]
        f.write(json.dumps(summary) + "\n")
    return paths


def rewrite_reports(report: dict[str, Any], out: Path) -> None:
    """drift.json and drift.html again (after the retrain path added its outcome)."""
    atomic_write_text(out / "drift.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "drift.html", render_html(report))


def _write_evidently(path: Path, ref: Any, win: Any) -> bool:
    """Evidently's DataDriftPreset over per-paper features; False (and a log line) when
    Evidently is not installed or fails: the JSON and the summary HTML do not depend on it."""
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError:
        log.info("evidently is not installed (pip install paperops[monitor]): no evidently.html")
        return False
    try:
        # the reference's label column is the true label, the window's the predicted one: the
        # same comparison the `label` check makes
        ref_labels = list(
            np.random.default_rng(0).choice(
                list(ref.label_share), size=len(ref.texts), p=list(ref.label_share.values())
            )
        )
        ref_df = pd.DataFrame({"text_chars": ref.chars, "label": ref_labels})
        win_df = pd.DataFrame(
            {
                "text_chars": [float(r["text_chars"]) for r in win.rows],
                "label": [r["label"] for r in win.rows],
                "confidence": [float(r["confidence"]) for r in win.rows],
            }
        )
        # deferred: pulls scipy
        from paperops.monitor.stats import words

        win_texts = win.texts
        ref_df["words"] = [len(words(t)) for t in ref.texts]
        if len(win_texts) == len(win.rows):
            win_df["words"] = [len(words(t)) for t in win_texts]
        cols = [c for c in ("text_chars", "words") if c in win_df]
        definition = DataDefinition(numerical_columns=cols, categorical_columns=["label"])
        snapshot = Report([DataDriftPreset()]).run(
            current_data=Dataset.from_pandas(win_df[[*cols, "label"]], data_definition=definition),
            reference_data=Dataset.from_pandas(
                ref_df[[*cols, "label"]], data_definition=definition
            ),
        )
        tmp = path.with_suffix(".html.tmp")
        snapshot.save_html(str(tmp))
        tmp.replace(path)
        return True
    except Exception as e:  # a reporting library must not fail the drift job
        log.warning("evidently report failed (%s): drift.json and drift.html are still written", e)
        return False


_SHOWN = {"score", "threshold", "drifted", "method", "status", "labels"}  # in the tables


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape(str(x))


def render_html(report: dict[str, Any]) -> str:
    """A dependency-free, self-contained HTML page of the report."""
    w, ref = report["window"], report["reference"]
    verdict = "DRIFT" if report["drifted"] else ("no drift" if report["status"] == "ok" else
                                                 report["status"].replace("_", " "))  # fmt: skip
    rows = []
    for name, c in report["checks"].items():
        state = "drifted" if c["drifted"] else ("skipped" if c["score"] is None else "ok")
        rows.append(
            f"<tr class='{state}'><td>{name}</td><td>{_fmt(c['score'])}</td>"
            f"<td>{_fmt(c['threshold'])}</td><td>{state}</td><td>{_fmt(c.get('method'))}</td>"
            f"<td>{_fmt(c.get('reason', ''))}</td></tr>"
        )
    details = []
    for name, c in report["checks"].items():
        extra = {k: v for k, v in c.items() if k not in _SHOWN}
        if extra:
            items = "".join(f"<li><b>{_fmt(k)}</b>: {_fmt(v)}</li>" for k, v in extra.items())
            details.append(f"<h3>{name}</h3><ul>{items}</ul>")
    labels = report["checks"].get("label", {}).get("labels") or []
    label_rows = "".join(
        f"<tr><td>{_fmt(r['label'])}</td><td>{r['reference']:.1%}</td><td>{r['window']:.1%}</td>"
        f"<td>{r['window'] - r['reference']:+.1%}</td></tr>"
        for r in labels
    )
    label_table = (
        "<h2>Label mix</h2><table><tr><th>label</th><th>reference</th><th>window (predicted)"
        f"</th><th>change</th></tr>{label_rows}</table>"
        if labels
        else ""
    )
    evidently = (
        "<p>Per-feature tests: <a href='evidently.html'>Evidently data-drift report</a></p>"
        if "evidently_html" in report.get("files", {})
        else ""
    )
    rt = report.get("retrain")
    retrain = ""
    if rt and rt.get("triggered"):
        cmds = "".join(
            f"<li><code>{_fmt(' '.join(r['command']))}</code>: exit {r['returncode']}, "
            f"{r['seconds']} s</li>"
            for r in rt["commands"]
        )
        retrain = (
            f"<h2>Retrain</h2><ul>{cmds}</ul><p>New registry versions: "
            f"{_fmt(rt['new_versions'] or 'none')}; champion {_fmt(rt['champion_before'])} → "
            f"{_fmt(rt['champion_after'])} ({'promoted' if rt['promoted'] else 'kept'}).</p>"
        )
    elif rt:
        retrain = f"<h2>Retrain</h2><p>Not run: {_fmt(rt.get('reason'))}.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>paperops drift report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
tr.drifted {{ background: #fde2e1; }} tr.skipped {{ color: #888; }}
.verdict {{ font-size: 1.4rem; font-weight: bold; }}
</style></head><body>
<h1>paperops drift report</h1>
<p class="verdict">{html.escape(verdict)}</p>
<p>Window <b>{_fmt(w["spec"])}</b> ({_fmt(w["since"])} → {_fmt(w["until"])}):
{w["papers"]} logged papers, {w["with_feedback"]} with feedback, model versions
{_fmt(w["model_versions"])}. Reference: {ref["sample"]} papers sampled from {_fmt(ref["source"])}
({ref["rows"]} rows). Computed {_fmt(report["created_at"])} in {report.get("seconds", 0)} s.</p>
<table><tr><th>check</th><th>score</th><th>threshold</th><th>state</th><th>method</th>
<th>note</th></tr>{"".join(rows)}</table>
{evidently}
{retrain}
{label_table}
<h2>Details</h2>{"".join(details)}
</body></html>
"""


def render_summary(report: dict) -> str:
    """The console table: one line per check, then the verdict and where the files are."""
    w = report["window"]
    lines = [
        f"drift: window {w['spec']}: {w['papers']} papers ({w['with_feedback']} with feedback) "
        f"vs {report['reference']['sample']} reference papers",
        f"  {'check':<11} {'score':>9} {'threshold':>9}  state",
    ]
    for name, c in report["checks"].items():
        score = "-" if c["score"] is None else f"{c['score']:.4f}"
        state = "DRIFT" if c["drifted"] else ("skipped" if c["score"] is None else "ok")
        note = f"  ({c['reason']})" if c.get("reason") else ""
        lines.append(f"  {name:<11} {score:>9} {c['threshold']:>9.4g}  {state}{note}")
    verdict = (
        f"DRIFT in {', '.join(report['drifted_checks'])}"
        if report["drifted"]
        else ("no drift" if report["status"] == "ok" else report["status"].replace("_", " "))
    )
    lines.append(f"  => {verdict}")
    for kind, path in report.get("files", {}).items():
        lines.append(f"  {kind}: {path}")
    return "\n".join(lines)


def render_retrain(rt: dict) -> str:
    """One line: what the retrain path ran and what the registry gate did."""
    if not rt["triggered"]:
        return f"  retrain: not run ({rt['reason']})"
    cmds = "; ".join(f"{' '.join(r['command'])} -> {r['returncode']}" for r in rt["commands"])
    outcome = " (promoted)" if rt["promoted"] else " (kept)"
    return (
        f"  retrain: {cmds}; new versions {rt['new_versions'] or 'none'}; champion "
        f"{rt['champion_before']} -> {rt['champion_after']}{outcome}"
    )
