"""`paperops export`: a trained bundle -> an ONNX (or sklearn) export directory for serving."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, e.g. experiment=demo_embedding", show_default=False),
]


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root CLI."""
    app.command("export")(export_cmd)


def export_cmd(
    overrides: Overrides = None,
    model: Annotated[
        Path | None, typer.Option(help="The bundle to export (default: export.model_dir).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Where the export goes, replaced atomically (default: export.output_dir)."
        ),
    ] = None,
    no_int8: Annotated[
        bool, typer.Option("--no-int8", help="Skip the int8 model (default: export.int8).")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(help="torch / ONNX Runtime threads for the export and parity check."),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Write the parity figures as JSON here (default: export.report, only when "
            "--model and --output are not given)."
        ),
    ] = None,
) -> None:
    """Export a bundle to ONNX (+ int8) and check it against PyTorch on the validation split.

    Exit 1 when ONNX does not match PyTorch (nothing is written), 2 for a missing or corrupt
    bundle or bad options.
    """
    from paperops.cli import _config, _fail
    from paperops.data.datamodule import EmptySplitError
    from paperops.export import (
        ExportConfig,
        ExportError,
        export_bundle,
        parity_table,
        write_parity_report,
    )
    from paperops.models.base import ModelLoadError

    cfg = _config(overrides)
    try:
        ecfg = ExportConfig.from_mapping(cfg.export)
    except (TypeError, ValueError) as e:
        raise _fail(f"bad export config: {e}") from None
    model_dir = model or Path(str(ecfg.model_dir))
    out_dir = output or Path(str(ecfg.output_dir))
    typer.echo(f"exporting {model_dir} -> {out_dir}")
    try:
        result = export_bundle(
            model_dir,
            out_dir,
            cfg_export=ecfg,
            processed_dir=Path(str(cfg.train.processed_dir)),
            seed=int(cfg.seed),
            int8=False if no_int8 else None,
            threads=threads,
        )
    except ExportError as e:
        if e.parity:
            typer.echo(parity_table(e.parity))
        raise _fail(str(e), code=1) from None
    except (ModelLoadError, FileNotFoundError, EmptySplitError, ValueError) as e:
        raise _fail(str(e)) from None
    typer.echo(parity_table(result.parity))
    files = ", ".join(f for f in result.files.values() if f)
    typer.echo(
        f"exported {result.family} ({result.runtime}) in {result.seconds:.1f} s -> {out_dir}\n"
        f"  files: {files}\n  parity texts: {result.parity.get('texts')}"
    )
    if report is None and ecfg.report and model is None and output is None:
        report = Path(ecfg.report)
    if report is not None:
        typer.echo(f"  parity report: {write_parity_report(result, report)}")
