"""`paperops data prepare|validate|harvest`: raw metadata to validated splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from paperops.cli.common import Overrides, compose, fail
from paperops.data.errors import DataError
from paperops.data.harvest import DEFAULT_BASE_URL

log = logging.getLogger("paperops")


def data_prepare(
    overrides: Overrides = None,
    on_error: Annotated[
        str | None,
        typer.Option(
            help="raise: stop at the first bad line; skip: drop bad lines and report them "
            "(default: data.on_error)"
        ),
    ] = None,
) -> None:
    """Clean, label, de-duplicate and split raw arXiv metadata into parquet + labels.json + card."""
    from paperops.data.prepare import PrepareConfig, prepare

    cfg = compose(overrides).data
    try:
        result = prepare(PrepareConfig.from_config(cfg, on_error=on_error or cfg.on_error))
    except (DataError, ValueError) as e:
        raise fail(str(e)) from None
    typer.echo(
        f"prepared {sum(result.counts.values()):,} papers, {len(result.labels)} labels "
        f"-> {result.output_dir} ({result.seconds:.1f} s)"
    )
    typer.echo("  " + ", ".join(f"{k}={v:,}" for k, v in result.counts.items()))
    if result.dropped:
        typer.echo("  dropped: " + ", ".join(f"{k}={v:,}" for k, v in result.dropped.items()))
    typer.echo(f"  data card: {result.output_dir / 'data_card.md'}")


def data_validate(
    overrides: Overrides = None,
    raw: Annotated[
        Path | None,
        typer.Option(
            help="Validate this raw JSON-lines file instead of the processed splits "
            "(reports every bad line; writes nothing)."
        ),
    ] = None,
) -> None:
    """Check processed splits (or a raw file) against the data rules; exit 1 on any violation."""
    from paperops.data.validate import validate_processed, validate_raw, write_report

    cfg = compose(overrides).data
    try:
        if raw is not None:
            report = validate_raw(raw, max_examples=cfg.validation.max_examples)
        else:
            report = validate_processed(
                Path(cfg.output_dir),
                dict(cfg.limits),
                min_rows_total=cfg.validation.min_rows_total,
                min_train_rows_per_class=cfg.validation.min_train_rows_per_class,
                max_examples=cfg.validation.max_examples,
            )
            write_report(report, Path(cfg.validation.report_path))
    except (FileNotFoundError, DataError, ValueError, json.JSONDecodeError) as e:
        raise fail(str(e)) from None
    typer.secho(
        report.render(), fg=typer.colors.GREEN if report.ok else typer.colors.RED, err=not report.ok
    )
    if not report.ok:
        raise typer.Exit(1)


def data_harvest(
    out: Annotated[Path, typer.Option(help="Output JSON-lines file (Kaggle snapshot format).")],
    base_url: Annotated[str, typer.Option(help="OAI-PMH endpoint.")] = DEFAULT_BASE_URL,
    metadata_prefix: Annotated[str, typer.Option(help="arXivRaw or arXiv.")] = "arXivRaw",
    set_spec: Annotated[
        str | None, typer.Option("--set", help="OAI set, e.g. cs or physics:quant-ph.")
    ] = None,
    from_date: Annotated[str | None, typer.Option("--from", help="YYYY-MM-DD")] = None,
    until_date: Annotated[str | None, typer.Option("--until", help="YYYY-MM-DD")] = None,
    max_records: Annotated[int | None, typer.Option(help="Stop after about this many.")] = None,
    min_interval: Annotated[
        float, typer.Option(help="Seconds between requests (arXiv asks for 3).")
    ] = 3.0,
    max_retries: Annotated[int, typer.Option(help="Retries per request on 503/5xx/timeouts.")] = 5,
    restart: Annotated[bool, typer.Option(help="Ignore saved progress and start over.")] = False,
) -> None:
    """Harvest arXiv metadata over OAI-PMH into JSON lines; resumes where an earlier run stopped."""
    from paperops.data.harvest import harvest
    from paperops.data.oai import HarvestError

    def progress(pages: int, total: int) -> None:
        log.info("page %d: %d records in %s", pages, total, out)

    try:
        result = harvest(
            base_url,
            out,
            metadata_prefix=metadata_prefix,
            set_spec=set_spec,
            from_date=from_date,
            until_date=until_date,
            max_records=max_records,
            min_interval_s=min_interval,
            max_retries=max_retries,
            restart=restart,
            on_page=progress,
        )
    except ValueError as e:
        raise fail(str(e)) from None
    except HarvestError as e:
        raise fail(str(e), code=1) from None
    state = "complete" if result.complete else "incomplete (run again to continue)"
    typer.echo(
        f"harvested {result.records_written:,} records this run, "
        f"{result.total_records:,} in {out}; {state}" + (" [resumed]" if result.resumed else "")
    )


def register(data_app: typer.Typer) -> None:
    data_app.command("prepare")(data_prepare)
    data_app.command("validate")(data_validate)
    data_app.command("harvest")(data_harvest)
