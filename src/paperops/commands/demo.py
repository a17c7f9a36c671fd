"""`paperops demo`: the last step of `make demo`. Starts the API on loopback exactly as a user
would (`paperops serve`, the registry champion by default), classifies the example papers of the
web page over HTTP, prints the answers and stops the server cleanly."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

EXAMPLES = "examples.json"


def load_examples() -> list[dict[str, Any]]:
    """The web page's example papers (shipped in the package, written for paperops)."""
    text = resources.files("paperops.serve").joinpath("static", EXAMPLES).read_text("utf-8")
    return list(json.loads(text))


def _print_answers(examples: list[dict[str, Any]], body: dict[str, Any]) -> None:
    m = body["model"]
    target = body.get("coverage_target")
    typer.echo(f"model {m['name']} v{m['version']} ({m['family']}, {m['runtime']})")
    for ex, res in zip(examples, body["results"], strict=True):
        typer.echo(f"\n  {ex['title'][:90]}")
        tops = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in res["top"])
        typer.echo(f"    -> {res['label']} ({res['name']}), confidence {res['confidence']:.2f}")
        typer.echo(f"       top: {tops}")
        members = [s["label"] for s in res["prediction_set"]]
        cov = f"{target:.0%}" if target else "target"
        typer.echo(
            f"       prediction set at {cov} coverage: {members}"
            if members
            else f"       prediction set at {cov} coverage: none (no confident label)"
        )


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        overrides: Annotated[
            list[str] | None,
            typer.Argument(help="Hydra overrides passed to `paperops serve`", show_default=False),
        ] = None,
        model: Annotated[
            Path | None, typer.Option(help="Serve this bundle instead of the champion.")
        ] = None,
    ) -> None:
        """Start the API on 127.0.0.1, classify the example papers over HTTP, print, stop."""
        import httpx

        from paperops.serve.launcher import ServerStartError, running_server

        examples = load_examples()
        args = [*(["--model", str(model)] if model else []), *(overrides or [])]
        typer.echo("starting paperops serve on 127.0.0.1 ...")
        try:
            with running_server(args) as base:
                typer.echo(f"API ready at {base} (docs: {base}/docs)")
                payload = {
                    "papers": [{"title": e["title"], "abstract": e["abstract"]} for e in examples],
                    "top_k": 3,
                }
                r = httpx.post(f"{base}/v1/classify", json=payload, timeout=120)
                r.raise_for_status()
                _print_answers(examples, r.json())
                ready = httpx.get(f"{base}/readyz", timeout=10).json()
                typer.echo(f"\nreadyz: {ready}")
            typer.echo("server stopped cleanly")
        except ServerStartError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        except httpx.HTTPError as e:
            typer.secho(f"error: request failed: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
