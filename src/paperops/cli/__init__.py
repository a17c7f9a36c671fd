"""The `paperops` command line: the top of the stack, so it may import every other room.

Thin: a command parses its options, composes the Hydra config (`common.compose`), calls the one
library function that does the work and prints. Each module here is one command group and adds
itself to the root app with `register(app)`. Every command that reads config takes Hydra
overrides as trailing arguments, e.g. `paperops data prepare data.label_level=category`.

Unlike the rooms below, command modules import their library code inside the command function:
`import paperops.cli` then takes ~0.3 s instead of ~0.7 s (pandas, pandera, the export and
monitoring modules), which every `paperops --help` and every CLI subprocess of `dvc repro` pays.
"""

from __future__ import annotations

from typing import Annotated

import typer
from omegaconf import OmegaConf

from paperops import __version__
from paperops.cli import (
    corpus,
    data,
    demo,
    evaluate,
    export,
    generate,
    models,
    monitor,
    predict,
    serve,
    train,
)
from paperops.cli.common import Overrides, compose, fail
from paperops.log import setup_logging

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
app.add_typer(models.models_app, name="models")
data.register(data_app)
corpus.register(data_app)
for _group in (train, evaluate, export, serve, predict, generate, monitor, demo):
    _group.register(app)


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
        raise fail(str(e)) from None


@config_app.command("show")
def config_show(overrides: Overrides = None) -> None:
    """Print the fully composed and resolved config as YAML."""
    typer.echo(OmegaConf.to_yaml(compose(overrides)))


def main() -> None:
    app()
