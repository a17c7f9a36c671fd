"""`paperops generate`: sample a continuation from a language model on this machine.

The same decoding code as the API (`paperops.inference.decoding`: `CausalLM.prompt_ids`, KV cache,
the seeded `Sampler`), so a prompt + seed printed here gives the tokens the API gives on the same
model through the same backend. The continuation goes to stdout (streamed piece by piece with
`--stream`); the summary line (tokens, tokens/s, seed to reproduce) goes to stderr, so stdout can be
piped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from paperops.cli.common import compose, fail
from paperops.config import cfg_get
from paperops.inference.generator import option_or, run_generation
from paperops.models.process import set_torch_threads

DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TEMPERATURE = 0.8  # the API's defaults (common.md, "The generation API")
DEFAULT_TOP_P = 0.95
# SamplingParams' field names -> the CLI option a user typed
OPTION_OF = {
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "seed": "--seed",
}


def option_error(message: str) -> str:
    """'temperature must be > 0, got 0.0' -> '--temperature must be > 0, got 0.0'."""
    for field, option in OPTION_OF.items():
        if message.startswith(field + " "):
            return option + message[len(field) :]
    return message


def generate_cmd(
    prompt: Annotated[str, typer.Argument(help="The text to continue.", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Hydra overrides, e.g. serve.threads=1", show_default=False),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="An LM bundle directory (default: the registry).")
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(help="Registered generator version: 'champion' or a version number."),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            help="Tokens to generate at most; the context may stop it first "
            "(default: serve.generator.default_max_new_tokens).",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="> 0; lower is more predictable (default: serve.generator.temperature).",
            show_default=False,
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            help="Nucleus sampling mass in (0, 1]; 1 = off (default: serve.generator.top_p).",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest; 0 = off.")] = 0,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for a reproducible sample (default: random, printed)."),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option("--stream/--no-stream", help="Print each piece as it is generated."),
    ] = True,
) -> None:
    """Continue PROMPT with a language model on this machine; print the text, then tokens,
    tokens/s and the seed (to reproduce the sample) on stderr."""
    # deferred: pandas and pandera load in ~0.5 s; `paperops --help` and other commands skip it
    from paperops.inference.decoding import SamplingParams
    from paperops.models.base import ModelLoadError
    from paperops.serve.loader import resolve_lm

    if model is not None and ref is not None:
        raise fail("give either --model or --ref, not both")
    if not prompt.strip():
        raise fail("PROMPT is empty: give the text to continue, e.g. 'Title: '")
    cfg = compose(overrides)
    defaults = cfg_get(cfg, "serve.generator", {})
    try:
        params = SamplingParams(
            max_new_tokens=option_or(
                max_new_tokens, defaults, "default_max_new_tokens", DEFAULT_MAX_NEW_TOKENS
            ),
            temperature=option_or(temperature, defaults, "temperature", DEFAULT_TEMPERATURE),
            top_p=option_or(top_p, defaults, "top_p", DEFAULT_TOP_P),
            top_k=top_k,
            seed=seed,
        )
    except ValueError as e:
        raise fail(option_error(str(e))) from None
    threads = cfg_get(cfg, "serve.generator.threads") or cfg_get(cfg, "serve.threads")
    set_torch_threads(threads)
    try:
        lm, source = resolve_lm(cfg, model, ref)
    except (ModelLoadError, OSError) as e:
        raise fail(str(e)) from None
    n_prompt = len(lm.prompt_ids(prompt))
    if n_prompt >= lm.context_length:
        raise fail(
            f"PROMPT has {n_prompt} tokens; the model's context is {lm.context_length}: shorten it"
        )

    def show(piece: str) -> None:
        typer.echo(piece, nl=False)

    result = run_generation(lm, prompt, params, on_piece=show if stream else None)
    if not stream:
        typer.echo(result.text, nl=False)
    typer.echo("")
    typer.echo(
        f"{result.generated_tokens} tokens ({result.finish_reason}) in "
        f"{result.total_s:.2f} s, {result.tokens_per_s:.1f} tokens/s, "
        f"first token after {result.ttft_s * 1000:.0f} ms, seed {result.seed} "
        f"({source})",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add `paperops generate` to the root CLI."""
    app.command("generate")(generate_cmd)
