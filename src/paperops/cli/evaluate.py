"""`paperops evaluate`: a bundle's test-set report (classifier or language model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from paperops.cli.common import Overrides, compose, fail


def evaluate_cmd(
    overrides: Overrides = None,
    model: Annotated[
        Path | None, typer.Option(help="A bundle directory (default: evaluate.model_dir).")
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(help="Evaluate a registered version instead: 'champion' or a version number."),
    ] = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the report goes (default: evaluate.report_dir).")
    ] = None,
) -> None:
    """Test-set metrics, calibration, conformal sets, slices and behavioural checks -> report
    (for a language model: held-out perplexity, bits per byte, slices and samples)."""
    from paperops.data.datamodule import EmptySplitError
    from paperops.evaluate import evaluate_bundle
    from paperops.models.base import ModelLoadError

    cfg = compose(overrides)
    try:
        model_dir = model or Path(cfg.evaluate.model_dir)
        if ref is not None:
            from paperops.tracking import registry

            model_dir = registry.download_bundle(
                cfg.logger, ref=ref, dst=Path(cfg.paths.models) / "registry" / ref
            )
        out = report_dir or Path(cfg.evaluate.report_dir)
        m = evaluate_bundle(cfg, model_dir, out)
    except (FileNotFoundError, EmptySplitError, ModelLoadError, ValueError) as e:
        raise fail(str(e)) from None
    if "perplexity" in m:
        typer.echo(
            f"evaluated {model_dir} on {m['n_test']:,} test texts -> {out}/report.md\n"
            f"  loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f} (unigram "
            f"{m['unigram_perplexity']:.2f}), {m['bits_per_byte']:.3f} bits/byte"
        )
        return
    c = m["conformal"]
    typer.echo(
        f"evaluated {model_dir} on {m['n_test']:,} test papers -> {out}/report.md\n"
        f"  accuracy {m['accuracy']:.4f}, top-3 {m['top3_accuracy']:.4f}, "
        f"macro-F1 {m['macro_f1']:.4f}, weighted-F1 {m['weighted_f1']:.4f}\n"
        f"  ECE {m['ece_before']:.4f} -> {m['ece_after']:.4f} (T={m['temperature']:.3f}); "
        f"conformal {c['method']} target {c['target']:.2f}: coverage {c['coverage']:.4f}, "
        f"mean set size {c['mean_set_size']:.2f}"
    )


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
