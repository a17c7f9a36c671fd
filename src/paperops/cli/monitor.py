"""`paperops monitor drift`: compare logged requests with the training reference, write the
reports, store the scores for the API, and (with --retrain) re-run the pipeline on drift."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from paperops.cli.common import Overrides, compose, fail

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
    # deferred: pandas loads in ~0.3 s; other commands skip it
    from paperops.monitor.config import DriftConfig, DriftError
    from paperops.monitor.drift import run_drift
    from paperops.monitor.report import render_retrain, render_summary

    cfg = compose(overrides)
    try:
        dcfg = DriftConfig.from_config(cfg.monitor)
        report = run_drift(dcfg, window)
    except DriftError as e:
        raise fail(str(e)) from None
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


def register(app: typer.Typer) -> None:
    """Add `paperops monitor`."""
    app.add_typer(monitor_app, name="monitor")
