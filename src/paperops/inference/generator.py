"""Loading a language model for generation (a bundle on torch, or an ONNX export) and running one
seeded generation: what `paperops generate` and the API's generator share.
"""

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paperops.config import cfg_get
from paperops.models.base import (
    EXPORT_FILE,
    LANGUAGE_MODEL,
    LM_FAMILY,
    ModelLoadError,
    is_language_model,
    probe_task,
    read_meta,
)
from paperops.models.process import set_torch_threads

if TYPE_CHECKING:  # torch lives behind these: a classifier-only server never imports it
    pass


WARMUP_PROMPT = "Warm-up"


@dataclass
class LoadedGenerator:
    """A decoder backend plus its tokenizer functions and what /v1/model reports."""

    backend: Any  # paperops.generation.DecoderBackend
    prompt_ids: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    name: str
    version: str
    runtime: str
    source: str
    corpus: str | None = None  # what it was trained on (model.json), e.g. for example prompts
    loaded_at: float = field(default_factory=time.time)

    @property
    def context_length(self) -> int:
        return int(self.backend.context_length)

    def summary(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "family": LM_FAMILY,
            "runtime": self.runtime,
        }


def _is_lm_export(path: Path) -> bool:
    return probe_task(path, EXPORT_FILE) == LANGUAGE_MODEL


def load_generator(
    path: Path,
    *,
    runtime: str = "torch",
    threads: int | None = None,
    name: str | None = None,
    version: str | None = None,
    source: str | None = None,
) -> LoadedGenerator:
    """An LM bundle (torch) or an LM export directory (ONNX Runtime), warmed up.

    runtime: torch (a bundle), onnx / onnx-int8 (an export directory), auto (whichever the
    directory is). Raises ModelLoadError naming the directory and the fix."""

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory: pass an LM bundle or LM export directory")
    is_export = _is_lm_export(path)
    if runtime == "auto":  # an export serves its int8 graph when it has one (as classifiers do)
        int8 = (path / "decoder.int8.onnx").is_file()
        runtime = ("onnx-int8" if int8 else "onnx") if is_export else "torch"
    if runtime in ("onnx", "onnx-int8"):
        if not is_export:
            raise ModelLoadError(
                f"{path} is not an LM export (no export.json with family lm): serve it with "
                "serve.generator.runtime=torch, or export it first (`paperops export --model "
                f"{path}`)"
            )
        try:
            from paperops.inference.onnx_decoder import OnnxDecoder
        except ImportError as e:
            raise ModelLoadError(
                f"ONNX decoding is not available ({e}); use serve.generator.runtime=torch"
            ) from e
        backend: Any = OnnxDecoder.load(path, int8=runtime == "onnx-int8", threads=threads)
        prompt_ids, decode = backend.prompt_ids, backend.decode
        meta: dict[str, Any] = json.loads((path / "export.json").read_text())
        if (path / "model.json").is_file():  # the bundle's own facts (corpus) travel with it
            meta = {**read_meta(path), **meta}
    elif runtime == "torch":
        if is_export:
            raise ModelLoadError(
                f"{path} is an ONNX export: serve it with serve.generator.runtime=onnx, or pass "
                "the LM bundle for torch"
            )

        # deferred: pulls torch
        from paperops.inference.decoding import TorchDecoder

        # deferred: pulls lightning, torch
        from paperops.models.lm import load_lm

        meta = read_meta(path)
        if not is_language_model(meta):
            raise ModelLoadError(
                f"{path} holds a {meta.get('family')!r} model, not a language model (family lm); "
                "pass an LM bundle (`paperops train experiment=lm_mqp`)"
            )
        set_torch_threads(threads)
        lm = load_lm(path)
        backend = TorchDecoder(lm)
        prompt_ids, decode = lm.prompt_ids, lm.decode
    else:
        raise ModelLoadError(f"unknown generator runtime {runtime!r}")
    gen = LoadedGenerator(
        backend=backend,
        prompt_ids=prompt_ids,
        decode=decode,
        name=name or str(meta.get("name") or path.name),
        version=str(version or meta.get("version") or "local"),
        runtime=str(getattr(backend, "kind", runtime)),
        source=source or str(path),
        corpus=None if meta.get("corpus") is None else str(meta.get("corpus")),
    )
    _warm(gen)
    return gen


def _warm(gen: LoadedGenerator) -> None:
    """A prefill and one decode step before serving: lazy init is not the first user's cost."""
    # deferred: pulls torch
    from paperops.inference.decoding import SamplingParams, generate

    ids = gen.prompt_ids(WARMUP_PROMPT)[: max(1, gen.context_length - 2)]
    for _ in generate(gen.backend, ids, SamplingParams(2, top_k=1, seed=0)):
        pass


GeneratorLoader = Callable[[], LoadedGenerator]


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


def option_or(given: Any, section: Any, key: str, fallback: Any) -> Any:
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


def run_generation(
    lm: Any,
    prompt: str,
    params: Any,
    *,
    on_piece: Any = None,
) -> GenerationResult:
    """Generate from `prompt` with `params` (a SamplingParams); `on_piece(text)` per piece."""
    # deferred: pulls torch
    from paperops.inference.decoding import Sampler, TorchDecoder, generate

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
