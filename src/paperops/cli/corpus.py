"""`paperops data prepare-corpus` and `paperops data validate-corpus`: the language model's corpus
as a pipeline stage (parquet splits + corpus.json, and a validation.json a DVC stage tracks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from paperops.cli.common import Overrides, compose, fail


def _corpus_config(overrides: list[str] | None) -> tuple[Any, Any]:
    """(root cfg, CorpusConfig); a missing corpus group or a bad key is a clear CLI error."""
    from paperops.data.corpus import CorpusConfig

    cfg = compose(overrides)
    if "corpus" not in cfg:
        raise fail(
            "no corpus config composed: pass corpus=mqp or corpus=arxiv (+corpus=... "
            "when configs/config.yaml has no corpus default)"
        )
    try:
        return cfg, CorpusConfig.from_config(cfg.corpus)
    except (ValueError, TypeError) as e:
        raise fail(f"corpus config: {e}") from None


def _report_path(cc: Any) -> Path:
    return Path(cc.report_path or Path("reports") / "corpus" / cc.name / "validation.json")


def prepare_corpus_cmd(overrides: Overrides = None) -> None:
    """Build the LM corpus (corpus=mqp|arxiv): documents, leak-free splits, rules checked."""
    from paperops.data.corpus import prepare_corpus, write_validation
    from paperops.data.corpus_rules import CorpusValidationError
    from paperops.data.errors import DataError

    cfg, cc = _corpus_config(overrides)
    try:
        result = prepare_corpus(cc, seed=int(cfg.seed))
    except CorpusValidationError as e:
        write_validation(e.report, _report_path(cc))
        raise fail(str(e), code=1) from None
    except (DataError, ValueError) as e:
        raise fail(str(e)) from None
    if result.report is not None:
        write_validation(result.report, _report_path(cc))
    typer.echo(
        f"prepared corpus {cc.name}: {sum(result.counts.values()):,} documents "
        f"-> {result.output_dir} ({result.seconds:.1f} s)"
    )
    typer.echo("  " + ", ".join(f"{k}={v:,}" for k, v in result.counts.items()))
    if result.dropped:
        typer.echo("  dropped: " + ", ".join(f"{k}={v:,}" for k, v in result.dropped.items()))
    typer.echo(f"  validation: {_report_path(cc)}")


def validate_corpus_cmd(overrides: Overrides = None) -> None:
    """Check a prepared LM corpus against its rules; exit 1 on any violation."""
    from paperops.data.corpus import validate_corpus, write_validation

    _, cc = _corpus_config(overrides)
    try:
        report = validate_corpus(cc.output_dir, cc)
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    write_validation(report, _report_path(cc))
    typer.secho(
        report.render(),
        fg=typer.colors.GREEN if report.ok else typer.colors.RED,
        err=not report.ok,
    )
    if not report.ok:
        raise typer.Exit(1)


def register(data_app: typer.Typer) -> None:
    """Add the corpus commands to `paperops data`."""
    data_app.command("prepare-corpus")(prepare_corpus_cmd)
    data_app.command("validate-corpus")(validate_corpus_cmd)
