"""The `paperops` command line. Thin: each command composes the Hydra config and calls one function.

Every command that reads config takes Hydra overrides as trailing arguments, e.g.
`paperops data prepare data.label_level=category data.min_count=20`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from omegaconf import OmegaConf

from paperops import __version__
from paperops.config import ConfigError, load_config
from paperops.data.errors import DataError
from paperops.data.harvest import DEFAULT_BASE_URL
from paperops.log import setup_logging

log = logging.getLogger("paperops")

app = typer.Typer(
    help="paperops: classify papers into arXiv categories and generate scientific "
    "text, with the whole MLOps lifecycle around both.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Ingest, prepare and validate data.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the composed configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
try:  # the registry commands need the train extra (mlflow)
    from paperops.commands.models import models_app

    app.add_typer(models_app, name="models")
except ImportError:  # pragma: no cover - a serve-only install
    pass

# export | serve | predict | generate | demo live in paperops.commands.<name>; each adds itself with
# register(app).
from paperops.commands import corpus as _corpus  # noqa: E402
from paperops.commands import demo as _demo  # noqa: E402
from paperops.commands import export as _export  # noqa: E402
from paperops.commands import generate as _generate  # noqa: E402
from paperops.commands import monitor as _monitor  # noqa: E402
from paperops.commands import predict as _predict  # noqa: E402
from paperops.commands import serve as _serve  # noqa: E402

for _module in (_export, _serve, _predict, _generate, _monitor, _demo):
    _module.register(app)
_corpus.register(data_app)

Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Hydra overrides, e.g. data.min_count=20 data.split=time", show_default=False
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _config(overrides: list[str] | None) -> Any:
    try:
        return load_config(overrides or [])
    except ConfigError as e:
        raise _fail(str(e)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"paperops {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING, ERROR (default: $PAPEROPS_LOG_LEVEL or INFO)"),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="console or json (default: $PAPEROPS_LOG_FORMAT or console)")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    try:
        setup_logging(log_level, log_format)
    except ValueError as e:
        raise _fail(str(e)) from None


@config_app.command("show")
def config_show(overrides: Overrides = None) -> None:
    """Print the fully composed and resolved config as YAML."""
    typer.echo(OmegaConf.to_yaml(_config(overrides)))


@data_app.command("prepare")
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

    cfg = _config(overrides).data
    try:
        result = prepare(PrepareConfig.from_config(cfg, on_error=on_error or cfg.on_error))
    except (DataError, ValueError) as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"prepared {sum(result.counts.values()):,} papers, {len(result.labels)} labels "
        f"-> {result.output_dir} ({result.seconds:.1f} s)"
    )
    typer.echo("  " + ", ".join(f"{k}={v:,}" for k, v in result.counts.items()))
    if result.dropped:
        typer.echo("  dropped: " + ", ".join(f"{k}={v:,}" for k, v in result.dropped.items()))
    typer.echo(f"  data card: {result.output_dir / 'data_card.md'}")


@data_app.command("validate")
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

    cfg = _config(overrides).data
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
        raise _fail(str(e)) from None
    typer.secho(
        report.render(), fg=typer.colors.GREEN if report.ok else typer.colors.RED, err=not report.ok
    )
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("harvest")
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
    from paperops.data.harvest import HarvestError, harvest

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
        raise _fail(str(e)) from None
    except HarvestError as e:
        raise _fail(str(e), code=1) from None
    state = "complete" if result.complete else "incomplete (run again to continue)"
    typer.echo(
        f"harvested {result.records_written:,} records this run, "
        f"{result.total_records:,} in {out}; {state}" + (" [resumed]" if result.resumed else "")
    )


@app.command("train")
def train_cmd(
    overrides: Overrides = None,
    multirun: Annotated[
        bool,
        typer.Option(
            "--multirun",
            "-m",
            help="Run the Optuna study named by hparams_search=... instead of one training run.",
        ),
    ] = False,
) -> None:
    """Train a model (experiment=tfidf|embedding|finetune|lm_mqp|lm_arxiv), track it, gate the
    champion."""
    from paperops.data.datamodule import EmptySplitError
    from paperops.models.base import ModelLoadError

    if multirun:
        from paperops.sweep import SweepConfigError, run_sweep

        _config(overrides)  # fail fast on a bad override
        try:
            res = run_sweep(overrides or [])
        except (SweepConfigError, ConfigError) as e:
            raise _fail(str(e)) from None
        typer.echo(
            f"study {res.study_name} ({res.storage}): {res.n_trials} trials, {res.n_pruned} "
            f"pruned; best {res.best_value:.4f} with {res.best_params}\n"
            f"  summary: {res.summary_path}"
        )
        return
    from paperops.train import train

    cfg = _config(overrides)
    try:
        result = train(cfg)
    except (FileNotFoundError, EmptySplitError, ModelLoadError, ValueError) as e:
        raise _fail(str(e)) from None
    if result is None:  # DDP rank > 0: rank 0 reports
        return
    v = result.val_metrics
    scores = (
        f"loss {v['val_loss']:.4f}, perplexity {v['val_perplexity']:.2f}"
        if result.family == "lm"
        else f"accuracy {v['val_accuracy']:.4f}, macro-F1 {v['val_macro_f1']:.4f}"
    )
    typer.echo(
        f"trained {result.family} in {result.train_seconds:.1f} s -> {result.bundle_dir}\n"
        f"  validation: {scores}"
    )
    if result.run_id:
        typer.echo(f"  mlflow run: {result.run_id} ({cfg.logger.tracking_uri})")
    if result.decision:
        d = result.decision
        typer.echo(f"  registry: {d['name']} v{d['version']}: {d['reason']}")


@app.command("evaluate")
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
    from paperops.jobs import evaluate_bundle
    from paperops.models.base import ModelLoadError

    cfg = _config(overrides)
    try:
        model_dir = model or Path(cfg.evaluate.model_dir)
        if ref is not None:
            from paperops import registry

            model_dir = registry.download_bundle(
                cfg.logger, ref=ref, dst=Path(cfg.paths.models) / "registry" / ref
            )
        out = report_dir or Path(cfg.evaluate.report_dir)
        m = evaluate_bundle(cfg, model_dir, out)
    except (FileNotFoundError, EmptySplitError, ModelLoadError, ValueError) as e:
        raise _fail(str(e)) from None
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
