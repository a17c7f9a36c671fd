"""`paperops monitor drift`: compare logged requests with the training reference, write the
reports, store the scores for the API, and (with --retrain) re-run the pipeline on drift."""

from __future__ import annotations

import json
from typing import Annotated

import typer

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, e.g. monitor.embedding.method=lsa", show_default=False),
]
monitor_app = typer.Typer(help="Drift detection over the request log.", no_args_is_help=True)

EXIT_DRIFT = 3  # --fail-on-drift: distinct from usage errors (2) and failures (1)


@monitor_app.command("drift")
def drift_cmd(
    overrides: Overrides = None,
    window: Annotated[
        str | None,
        typer.Option(help="30m, 24h, 7d, 2w or all, ending now (default: monitor.window)"),
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(help="on drift in a monitor.retrain.triggers check, run its commands"),
    ] = False,
    force_retrain: Annotated[
        bool, typer.Option(help="run the retrain commands even without drift")
    ] = False,
    fail_on_drift: Annotated[
        bool, typer.Option(help=f"exit {EXIT_DRIFT} when a check drifted (for cron and CI)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Score drift of a window of logged requests against the training reference."""
    from paperops.cli import _config, _fail
    from paperops.monitor.drift import DriftConfig, DriftError, run_drift

    cfg = _config(overrides)
    try:
        dcfg = DriftConfig.from_config(cfg.monitor)
        report = run_drift(dcfg, window)
    except DriftError as e:
        raise _fail(str(e)) from None
    if not as_json:  # the verdict first: a retrain may take hours
        typer.echo(render_summary(report))
    if retrain or force_retrain:
        from pathlib import Path

        from paperops.monitor.report import rewrite_reports
        from paperops.monitor.retrain import retrain as run_retrain

        rcfg = cfg.monitor.retrain
        report["retrain"] = run_retrain(
            report,
            triggers=list(rcfg.triggers),
            commands=[list(c) for c in rcfg.commands],
            timeout_s=float(rcfg.timeout_s),
            logger_cfg=cfg.logger,
            force=force_retrain,
        )
        rewrite_reports(report, Path(dcfg.output_dir))
        if not as_json:
            typer.echo(render_retrain(report["retrain"]))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    if fail_on_drift and report["drifted"]:
        raise typer.Exit(EXIT_DRIFT)
    if report.get("retrain", {}).get("ok") is False:
        raise typer.Exit(1)


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


def register(app: typer.Typer) -> None:
    """Add `paperops monitor`."""
    app.add_typer(monitor_app, name="monitor")
