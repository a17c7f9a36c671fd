"""`paperops serve`: the classification API on uvicorn (one process, one inference worker).

Fail fast by default: the model is loaded before the port is opened, and a model that cannot load
exits with code 2 and the reason. `--wait-ready` opens the port first (/healthz answers, /readyz
says 503 and why) and loads in the background: what an orchestrator with readiness probes wants.
SIGINT/SIGTERM stop it cleanly: in-flight requests finish, then the request log is flushed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from paperops.cli.common import Overrides, compose, fail
from paperops.serve.launcher import run_server

# what a serve-only install (pip install paperops[serve]) lacks for some models
MISSING_EXTRA = (
    "this model needs `pip install paperops[train]` (the language model and unexported neural "
    "bundles need torch); a serve-only install serves tfidf and hybrid bundles and ONNX "
    "classifier exports (`paperops export`)"
)


def serve_cmd(
    overrides: Overrides = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Serve this bundle or export directory (default: the registry)."),
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(help="Registry alias or version to serve (default: serve.ref=champion)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    wait_ready: Annotated[
        bool,
        typer.Option(
            "--wait-ready/--fail-fast",
            help="--fail-fast (default): load the model before listening; exit 2 if it "
            "cannot load. --wait-ready: listen at once, load in the background "
            "(/readyz is 503 until the model is ready).",
        ),
    ] = False,
    access_log: Annotated[
        bool, typer.Option(help="Log every HTTP request line (noisy under load).")
    ] = False,
    generator: Annotated[
        Path | None,
        typer.Option(
            help="Serve this LM bundle or LM export directory at /v1/generate and /infer "
            "(default: serve.generator.model, else the paperops-generator champion if one "
            "is registered)."
        ),
    ] = None,
    generator_ref: Annotated[
        str | None,
        typer.Option(help="Registry alias or version of the language model to serve."),
    ] = None,
) -> None:
    """Serve the classifier over HTTP: /v1/classify, /predict, /docs, /metrics, a web page."""
    from paperops.models.base import ModelLoadError
    from paperops.serve.app import create_app
    from paperops.serve.loader import check_local_dirs, make_generator_loader, make_loader
    from paperops.serve.settings import ServeSettings, SettingsError
    from paperops.serve.state import warm

    if model is not None and ref is not None:
        raise fail("give either --model or --ref, not both")
    if generator is not None and generator_ref is not None:
        raise fail("give either --generator or --generator-ref, not both")
    cfg = compose(overrides)
    given = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    try:
        settings = ServeSettings.from_config(cfg.serve, **given)
    except SettingsError as e:
        raise fail(str(e)) from None
    loader = make_loader(cfg, model=model, ref=ref)
    if wait_ready:
        # a missing path is a typo, not a model fault: waiting cannot fix it, so exit 2 now
        try:
            check_local_dirs(cfg, model, ref, generator=generator)
        except ModelLoadError as e:
            raise fail(str(e)) from None
    predictor = None
    if not wait_ready:
        try:
            predictor = warm(loader(None))
        except (ModelLoadError, ValueError, OSError) as e:
            raise fail(str(e)) from None
        except ImportError as e:  # e.g. a tfidf bundle (skops) on a serve-only install
            raise fail(f"{e}: {MISSING_EXTRA}") from None
    gen_settings = settings.generator
    # asked for by name (an option) or by config (enabled: true): failing to load is fatal
    required = gen_settings.required or generator is not None or generator_ref is not None
    gen_loader = None
    if gen_settings.enabled is not False or required:
        gen_loader = make_generator_loader(cfg, model=generator, ref=generator_ref)
    gen, gen_error = None, None
    if gen_loader is not None and not wait_ready:
        try:
            gen = gen_loader()
        except ImportError as e:  # the LM needs torch (the train extra) even when exported
            if required:
                msg = f"the language model cannot be loaded: {e}: {MISSING_EXTRA}"
                raise fail(msg) from None
            gen_error = f"{e} ({MISSING_EXTRA})"
            typer.echo(f"no language model: {gen_error}; /v1/generate answers 503", err=True)
        except (ModelLoadError, ValueError, OSError) as e:
            if required:
                raise fail(f"the language model cannot be loaded: {e}") from None
            gen_error = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            typer.echo(f"no language model: {gen_error}; /v1/generate answers 503", err=True)
    try:
        api = create_app(
            settings,
            loader,
            predictor=predictor,
            generator=gen,
            generator_loader=gen_loader if wait_ready else None,
            generator_error=gen_error,
        )
    except (ValueError, OSError) as e:
        raise fail(str(e)) from None

    def started(url: str) -> None:
        if predictor is None:
            what = "(model loading: /readyz turns 200 when it is ready)"
        else:
            i = predictor.info
            what = f"{i.name} v{i.version} ({i.runtime})"
        if gen is not None:
            what += f" + language model {gen.name} v{gen.version} ({gen.runtime})"
        typer.echo(f"serving {what} at {url}  (docs: /docs)")

    run_server(
        api,
        settings.host,
        settings.port,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        timeout_keep_alive=settings.keep_alive_s,
        access_log=access_log,
        on_started=started,
    )


def register(app: typer.Typer) -> None:
    """Add `paperops serve` to the root CLI."""
    app.command("serve")(serve_cmd)
