"""`paperops export`: a trained bundle -> an ONNX (or sklearn) export directory for serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from paperops.cli.common import Overrides, compose, fail


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
    from paperops.data.datamodule import EmptySplitError
    from paperops.export.classifier import export_bundle
    from paperops.export.common import ExportConfig, ExportError, parity_table, write_parity_report
    from paperops.export.lm import is_lm_bundle
    from paperops.models.base import ModelLoadError

    cfg = compose(overrides)
    model_dir = model or Path(str(cfg.export.model_dir))
    if is_lm_bundle(model_dir):
        _export_lm(cfg, model_dir, output, no_int8, threads, report, model)
        return
    try:
        ecfg = ExportConfig.from_mapping(_without_lm(cfg.export))
    except (TypeError, ValueError) as e:
        raise fail(f"bad export config: {e}") from None
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
        raise fail(str(e), code=1) from None
    except (ModelLoadError, FileNotFoundError, EmptySplitError, ValueError) as e:
        raise fail(str(e)) from None
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


def _without_lm(export_cfg: Any) -> Any:
    """cfg.export minus its `lm:` section (the language-model export's own settings)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(export_cfg, resolve=True) if export_cfg is not None else {}
    if isinstance(values, dict):
        values.pop("lm", None)
    return values


def _export_lm(
    cfg: Any,
    model_dir: Path,
    output: Path | None,
    no_int8: bool,
    threads: int | None,
    report: Path | None,
    model: Path | None,
) -> None:
    """An `lm` bundle: the GPT-2 decoder with past key values to ONNX (+ int8), parity-checked
    against PyTorch on fixed prompts (settings: `export.lm`)."""
    from paperops.export.common import ExportError
    from paperops.export.lm import LMExportConfig, export_lm
    from paperops.export.lm_parity import lm_parity_table
    from paperops.io import atomic_write_text
    from paperops.models.base import ModelLoadError

    try:
        lcfg = LMExportConfig.from_mapping(cfg.export.get("lm"))
    except (TypeError, ValueError) as e:
        raise fail(f"bad export.lm config: {e}") from None
    out_dir = output or Path(str(cfg.export.output_dir))
    texts = _heldout_texts(cfg, lcfg.ppl_texts)
    typer.echo(
        f"exporting language model {model_dir} -> {out_dir}"
        + (f" (perplexity delta on {len(texts)} val texts)" if texts else "")
    )
    try:
        meta = export_lm(
            model_dir,
            out_dir,
            cfg=lcfg,
            int8=False if no_int8 else None,
            texts=texts,
            threads=threads,
        )
    except ExportError as e:
        if e.parity:
            typer.echo(lm_parity_table(e.parity))
        raise fail(str(e), code=1) from None
    except (ModelLoadError, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    parity = meta["parity"]
    typer.echo(lm_parity_table(parity))
    files = ", ".join(f for f in meta["files"].values() if f)
    typer.echo(
        f"exported lm (onnx) in {meta['seconds']['total']:.1f} s -> {out_dir}\n  files: {files}"
    )
    if report is None and cfg.export.get("report") and model is None and output is None:
        report = Path(str(cfg.export.report))
    if report is not None:
        figures = {k: parity[k] for k in ("fp32", "int8", "perplexity") if k in parity}
        out = {"runtime": "onnx", "family": "lm", **figures}
        out["export_seconds"] = meta["seconds"]["total"]
        atomic_write_text(Path(report), json.dumps(out, indent=2) + "\n")
        typer.echo(f"  parity report: {report}")


def _heldout_texts(cfg: Any, n: int) -> list[str] | None:
    """Up to `n` texts of the composed corpus's val split (`corpus.output_dir`), for the
    perplexity delta; None when no corpus is composed or prepared (the delta is then skipped)."""
    from omegaconf import OmegaConf

    directory = OmegaConf.select(cfg, "corpus.output_dir", default=None)
    if not directory or n < 1 or not (Path(str(directory)) / "val.parquet").is_file():
        return None
    from paperops.data.corpus import load_corpus

    seed = int(OmegaConf.select(cfg, "seed", default=0) or 0)
    return load_corpus(Path(str(directory)), ("val",), max_rows={"val": n}, seed=seed)["val"]
