"""Offline batch prediction (`paperops predict`): a JSON-lines file through the serving predictor.

The same model resolution, input rules (`make_paper_model` with `serve.limits`) and `Predictor`
as the API, so a file scored offline gets exactly the answers the API would give. The input is
streamed (any size); the output appears atomically (temp file + rename): a failed run never
leaves a partial file where a finished one is expected. With an explainer (`--explain`) every
row also gets `explanation`, computed by the same `paperops.inference.explain` as the API's;
with `cross_lists`, the head's suggestions as the API's `cross_lists=true` gives them.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ON_ERROR = ("raise", "skip")


MAX_LISTED = 20  # skipped lines listed on stderr; the rest are counted


class BadLine(ValueError):
    """An input line that is not a valid paper; the message names the line, field and rule."""


@dataclass
class PredictSummary:
    papers: int = 0
    skipped: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first MAX_LISTED skipped lines

    @property
    def papers_per_s(self) -> float:
        return self.papers / self.seconds if self.seconds > 0 else 0.0


def _open_input(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


def _count_lines(path: Path) -> int | None:
    """Lines in a plain file (for the progress bar's total); None for gzip (not worth a pass)."""
    if path.suffix == ".gz":
        return None
    n = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


def _describe(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors -> 'abstract: String should have at most 6000 characters
    (string_too_long)'."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        where = f"{loc}: " if loc else ""
        parts.append(f"{where}{e.get('msg', '?')} ({e.get('type', '?')})")
    return "; ".join(parts)


def _papers(path: Path, paper_model: Any) -> Iterator[tuple[int, Any | BadLine]]:
    """(line number, validated paper or the BadLine) per non-blank line, streamed."""
    from pydantic import ValidationError

    with _open_input(path) as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline) are not papers
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    number,
                    BadLine(f"line {number}: not valid UTF-8 ({e.reason} at byte {e.start})"),
                )
                continue
            try:
                yield number, paper_model.model_validate_json(text)
            except ValidationError as e:
                yield number, BadLine(f"line {number}: {_describe(e.errors())}")


def predict_file(
    predictor: Any,
    input_path: Path,
    output_path: Path,
    paper_model: Any,
    *,
    batch_size: int = 64,
    top_k: int = 3,
    on_error: str = "raise",
    progress: bool | None = None,
    explainer: Any | None = None,
    cross_lists: bool = False,
) -> PredictSummary:
    """Score every paper of `input_path` into `output_path` (one JSON line each, input order).

    `on_error="raise"` stops at the first bad line (BadLine) and leaves no output file;
    `"skip"` scores the good lines and lists the bad ones in the summary. `explainer` (a
    `paperops.inference.explain.Explainer`) adds each paper's explanation of its label;
    `cross_lists` the suggested cross-lists (the model needs a cross-list head).
    """
    from tqdm import tqdm

    if on_error not in ON_ERROR:
        raise ValueError(f"--on-error must be one of {ON_ERROR}; got {on_error!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist (a JSON-lines file)")
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"--output {output_path} is the input file; choose another path")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    version = predictor.info.version
    summary = PredictSummary()
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(
        dir=output_path.parent, prefix=f".{output_path.name}.", suffix=".tmp"
    )
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "w", encoding="utf-8") as out,
            tqdm(
                total=_count_lines(input_path),
                unit="paper",
                desc="predict",
                disable=None if progress is None else not progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            batch: list[tuple[int, Any]] = []

            def flush() -> None:
                papers = [(p.title, p.abstract) for _, p in batch]
                preds = predictor.predict_papers(papers, top_k, cross_lists)
                why = (
                    explainer.explain(papers, [p.label for p in preds])
                    if explainer is not None
                    else [None] * len(preds)
                )
                for (number, paper), pred, e in zip(batch, preds, why, strict=True):
                    row: dict[str, Any] = {"line": number}
                    if paper.id is not None:
                        row["id"] = paper.id
                    row.update(pred.to_dict())
                    if e is not None:
                        row["explanation"] = e.to_dict()
                    row["model_version"] = version
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                summary.papers += len(batch)
                bar.update(len(batch))
                batch.clear()

            for number, item in _papers(input_path, paper_model):
                if isinstance(item, BadLine):
                    if on_error == "raise":
                        raise item
                    summary.skipped += 1
                    if len(summary.problems) < MAX_LISTED:
                        summary.problems.append(str(item))
                    bar.update(1)
                    continue
                batch.append((number, item))
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(output_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    summary.seconds = time.perf_counter() - start
    return summary
