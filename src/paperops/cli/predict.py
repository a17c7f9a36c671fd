"""`paperops predict`: offline batch scoring of a JSON-lines file through the serving runtime.

The same model resolution, input rules (`make_paper_model` with `serve.limits`) and `Predictor`
as the API, so a file scored offline gets exactly the answers the API would give. The input is
streamed (any size); the output appears atomically (temp file + rename): a failed run never
leaves a partial file where a finished one is expected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from paperops.cli.common import compose, fail

log = logging.getLogger(__name__)


def predict_cmd(
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="JSON lines, one paper each: {title, abstract, id?} (.gz works too).",
        ),
    ],
    output_path: Annotated[
        Path,
        typer.Option("--output", "-o", help="JSON lines, one answer per input paper, same order."),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Hydra overrides, e.g. serve.threads=1 serve.runtime=onnx",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="A bundle or export directory (default: serve.model / registry)."),
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(help="A registered version: 'champion' or a version number."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Papers per inference call.")] = 64,
    top_k: Annotated[
        int | None,
        typer.Option(min=1, help="Top categories per paper (default: serve.limits.default_top_k)."),
    ] = None,
    on_error: Annotated[
        str,
        typer.Option(
            help="raise: stop at the first bad line (exit 1, no output file); "
            "skip: score the good lines and list the bad ones."
        ),
    ] = "raise",
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress bar (default: on a TTY)."),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain/--no-explain",
            help="Add each paper's explanation (terms or sentences that pushed its label), as "
            "the API's explain=true; serve.explain.methods/max_terms/max_sentences apply.",
        ),
    ] = False,
    cross_lists: Annotated[
        bool | None,
        typer.Option(
            "--cross-lists/--no-cross-lists",
            help="Add each paper's suggested cross-lists (other categories it belongs in), as "
            "the API's cross_lists=true. Default: on when the model has a cross-list head.",
        ),
    ] = None,
) -> None:
    """Score a JSON-lines file of papers offline through the serving runtime."""
    # deferred: pandas and pandera load in ~0.5 s; `paperops --help` and other commands skip it
    from paperops.inference.explain import CannotExplain, make_explainer
    from paperops.models.base import ModelLoadError
    from paperops.serve.batch import ON_ERROR, BadLine, predict_file
    from paperops.serve.loader import resolve_predictor
    from paperops.serve.schemas import make_paper_model
    from paperops.serve.settings import ServeSettings, SettingsError

    if on_error not in ON_ERROR:
        raise fail(f"--on-error must be one of {', '.join(ON_ERROR)}; got {on_error!r}")
    if model is not None and ref is not None:
        raise fail("give either --model or --ref, not both")
    if not input_path.is_file():
        raise fail(f"--input {input_path} does not exist (a JSON-lines file of papers)")
    cfg = compose(overrides)
    try:
        settings = ServeSettings.from_config(cfg.serve)
    except SettingsError as e:
        raise fail(str(e)) from None
    try:
        predictor = resolve_predictor(cfg, model=model, ref=ref)
    except (ModelLoadError, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    k = top_k if top_k is not None else settings.limits.default_top_k
    has_head = predictor.cross_lists is not None
    if cross_lists and not has_head:
        info = predictor.info
        raise fail(
            f"--cross-lists: model {info.name} v{info.version} ({info.family}) has no cross-list "
            "head (train with experiment=category); run without --cross-lists"
        )
    explainer = None
    if explain:
        s = settings.explain
        try:
            explainer = make_explainer(
                predictor, methods=s.methods, max_terms=s.max_terms, max_sentences=s.max_sentences
            )
        except CannotExplain as e:
            raise fail(str(e)) from None
    try:
        summary = predict_file(
            predictor,
            input_path,
            output_path,
            make_paper_model(settings.limits),
            batch_size=batch_size,
            top_k=k,
            on_error=on_error,
            progress=progress,
            explainer=explainer,
            cross_lists=has_head if cross_lists is None else cross_lists,
        )
    except BadLine as e:
        raise fail(
            f"{input_path}: {e}. Fix the line, or pass --on-error skip to score the "
            "others; no output was written.",
            code=1,
        ) from None
    except (OSError, ValueError) as e:
        raise fail(str(e), code=1) from None
    for problem in summary.problems:
        typer.secho(f"skipped {problem}", fg=typer.colors.YELLOW, err=True)
    if summary.skipped > len(summary.problems):
        typer.secho(
            f"skipped {summary.skipped - len(summary.problems)} more bad lines",
            fg=typer.colors.YELLOW,
            err=True,
        )
    info = predictor.info
    typer.echo(
        f"predicted {summary.papers:,} papers, skipped {summary.skipped:,} in "
        f"{summary.seconds:.2f} s ({summary.papers_per_s:,.1f} papers/s) with {info.name} "
        f"v{info.version} ({info.runtime}) -> {output_path}"
    )


def register(app: typer.Typer) -> None:
    """Add `paperops predict` to the root CLI."""
    app.command("predict")(predict_cmd)
