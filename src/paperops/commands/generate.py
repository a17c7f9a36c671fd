"""`paperops generate`: sample a continuation from a language model on this machine.

The same decoding code as the API (`paperops.generation`: `CausalLM.prompt_ids`, KV cache, the
seeded `Sampler`), so a prompt + seed printed here gives the tokens the API gives on the same
model through the same backend. The continuation goes to stdout (streamed piece by piece with
`--stream`); the summary line (tokens, tokens/s, seed to reproduce) goes to stderr, so stdout
can be piped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from paperops.config import cfg_get

DEFAULT_REGISTERED = "paperops-generator"
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


@dataclass
class GenerationResult:
    text: str
    seed: int
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # eos | length | context
    ttft_s: float
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.total_s if self.total_s > 0 else 0.0


def _or(given: Any, section: Any, key: str, fallback: Any) -> Any:
    """The option if given, else the config's `serve.generator.<key>`, else `fallback`."""
    if given is not None:
        return given
    return cfg_get(section, key, fallback)


def text_pieces(decode: Any, tokens: Iterable[int]) -> Iterator[tuple[int, str]]:
    """(token id, the text it adds) per token. Byte-level BPE can split one character over
    several tokens: a piece that would end in an incomplete character is held back until the
    character is whole, so the pieces always concatenate to `decode(all ids)`."""
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = decode(ids)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for the rest
            yield token, ""
            continue
        piece = text[len(shown) :] if text.startswith(shown) else text
        shown = text
        yield token, piece
    final = decode(ids) if ids else ""
    if final != shown and final.startswith(shown):  # the model stopped mid-character
        yield -1, final[len(shown) :]


def option_error(message: str) -> str:
    """'temperature must be > 0, got 0.0' -> '--temperature must be > 0, got 0.0'."""
    for field, option in OPTION_OF.items():
        if message.startswith(field + " "):
            return option + message[len(field) :]
    return message


def run_generation(
    lm: Any,
    prompt: str,
    params: Any,
    *,
    on_piece: Any = None,
) -> GenerationResult:
    """Generate from `prompt` with `params` (a SamplingParams); `on_piece(text)` per piece."""
    from paperops.generation import Sampler, TorchDecoder, generate

    prompt_ids = lm.prompt_ids(prompt)
    backend = TorchDecoder(lm)
    sampler = Sampler(params)
    start = time.perf_counter()
    ttft = 0.0
    count = 0
    parts: list[str] = []
    tokens = generate(backend, prompt_ids, params, sampler=sampler)
    for token, piece in text_pieces(lm.decode, tokens):
        if token >= 0:
            count += 1
            if count == 1:
                ttft = time.perf_counter() - start
        if piece:
            parts.append(piece)
            if on_piece is not None:
                on_piece(piece)
    total = time.perf_counter() - start
    if count >= params.max_new_tokens:
        reason = "length"
    elif len(prompt_ids) + count >= backend.context_length:
        reason = "context"
    else:
        reason = "eos"
    return GenerationResult(
        text="".join(parts),
        seed=sampler.seed,
        prompt_tokens=len(prompt_ids),
        generated_tokens=count,
        finish_reason=reason,
        ttft_s=ttft,
        total_s=total,
    )


def resolve_lm(cfg: Any, model: Path | None, ref: str | None) -> tuple[Any, str]:
    """The LM to use and a description of where it came from: `model` (a bundle directory),
    else `serve.generator.model` when configured, else registry version `ref` (default
    `champion`) of the generator's registered model."""
    from paperops.models.base import ModelLoadError
    from paperops.models.lm import load_lm

    if model is None and ref is None and cfg_get(cfg, "serve.generator.model"):
        model = Path(str(cfg_get(cfg, "serve.generator.model")))
    if model is not None:
        if not Path(model).is_dir():
            raise ModelLoadError(f"--model {model} is not a directory; pass an LM bundle")
        return load_lm(Path(model)), str(model)
    name = str(cfg_get(cfg, "serve.generator.registered_model", DEFAULT_REGISTERED))
    ref = str(ref or cfg_get(cfg, "serve.generator.ref", "champion"))
    try:
        from paperops import registry
    except ImportError as e:  # a serve-only install has no mlflow
        raise ModelLoadError(
            f"a registered model needs the train extra ({e}); pass --model DIR instead"
        ) from e
    models_dir = Path(str(cfg_get(cfg, "paths.models", "models")))
    try:
        bundle = registry.download_bundle(
            cfg.logger, ref, models_dir / "registry" / name, name=name
        )
    except registry.RegistryError as e:
        raise ModelLoadError(f"{e} (or pass --model DIR to use an LM bundle)") from e
    except Exception as e:  # mlflow's own errors: no store, unreachable server
        raise ModelLoadError(
            f"cannot read {name}@{ref} from {cfg_get(cfg, 'logger.tracking_uri')}: {e}; train and "
            "register a language model first, or pass --model DIR"
        ) from e
    return load_lm(bundle), f"{name}@{ref}"


def register(app: typer.Typer) -> None:
    """Add `paperops generate` to the root CLI."""

    @app.command("generate")
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
        from paperops.cli import _config, _fail
        from paperops.generation import SamplingParams
        from paperops.models.base import ModelLoadError

        if model is not None and ref is not None:
            raise _fail("give either --model or --ref, not both")
        if not prompt.strip():
            raise _fail("PROMPT is empty: give the text to continue, e.g. 'Title: '")
        cfg = _config(overrides)
        defaults = cfg_get(cfg, "serve.generator", {})
        try:
            params = SamplingParams(
                max_new_tokens=_or(
                    max_new_tokens, defaults, "default_max_new_tokens", DEFAULT_MAX_NEW_TOKENS
                ),
                temperature=_or(temperature, defaults, "temperature", DEFAULT_TEMPERATURE),
                top_p=_or(top_p, defaults, "top_p", DEFAULT_TOP_P),
                top_k=top_k,
                seed=seed,
            )
        except ValueError as e:
            raise _fail(option_error(str(e))) from None
        threads = cfg_get(cfg, "serve.generator.threads") or cfg_get(cfg, "serve.threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        try:
            lm, source = resolve_lm(cfg, model, ref)
        except (ModelLoadError, OSError) as e:
            raise _fail(str(e)) from None
        n_prompt = len(lm.prompt_ids(prompt))
        if n_prompt >= lm.context_length:
            raise _fail(
                f"PROMPT has {n_prompt} tokens; the model's context is {lm.context_length}: "
                "shorten it"
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
