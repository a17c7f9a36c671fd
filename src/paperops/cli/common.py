"""What every command shares: the Hydra-overrides argument, config composition, failing cleanly.

A command parses its options, composes the config, calls one library function and prints; any
error a user can fix is an exit code 2 (1 for "ran, but the answer is bad") with one red line.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from paperops.config import ConfigError, load_config

Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Hydra overrides, e.g. data.min_count=20 serve.runtime=onnx", show_default=False
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` in red on stderr; raise the returned Exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def compose(overrides: list[str] | None) -> Any:
    """The composed Hydra config, or a clean exit 2 naming the bad override."""
    try:
        return load_config(overrides or [])
    except ConfigError as e:
        raise fail(str(e)) from None
