"""Raw data readers: Kaggle arXiv-snapshot JSON lines (plain or gzip) and the medical question
pairs CSV.

Both stream line by line (constant memory: the full Kaggle snapshot is ~4 GB) and point at bad
input by file and line. With on_error="skip" a bad line is counted and reported instead of
stopping the run.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from paperops.data.errors import DataError

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ARXIV_FIELDS = ("id", "title", "abstract", "categories", "update_date")
# Optional: the listing a row was taken from (the shared files name a GitHub repository). A file
# without it is one source, named after the file.
SOURCE_FIELD = "source"
MQP_COLUMNS = ("dr_id", "question_1", "question_2", "label")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ReadReport:
    """What a reader saw: records yielded, lines skipped by rule (with the first few messages)."""

    path: str
    lines: int = 0
    records: int = 0
    blank_lines: int = 0
    truncated: bool = False
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def skip(self, err: DataError) -> None:
        rule = err.rule or "error"
        self.skipped[rule] += 1
        ex = self.examples.setdefault(rule, [])
        if len(ex) < self.max_examples:
            ex.append(str(err))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _raw_lines(path: Path, report: ReadReport, on_error: OnError) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, bytes). Gzip is detected by magic bytes, not by the file name."""
    if not path.is_file():
        raise DataError("file not found", path=path, rule="file_exists")
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if is_gzip else open
    lineno = 0
    with opener(path, "rb") as f:  # type: ignore[operator]
        try:
            for lineno, raw in enumerate(f, start=1):  # lineno is used after the loop
                report.lines = lineno
                yield lineno, raw
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            err = DataError(
                f"gzip stream is truncated or corrupt after line {lineno} ({e}); "
                "the file is incomplete: download or copy it again",
                path=path,
                line=lineno + 1,
                rule="gzip_integrity",
            )
            if on_error == "raise":
                raise err from e
            report.truncated = True
            report.skip(err)
            log.warning("%s: reading stopped early", err)


def iter_arxiv_jsonl(
    path: str | Path, *, on_error: OnError = "raise", report: ReadReport | None = None
) -> Iterator[dict[str, Any]]:
    """Yield Kaggle-snapshot records {id, title, abstract, categories, update_date, line}.

    `categories` is a space-separated string (a JSON list is accepted and joined). Extra keys are
    ignored. Structural problems (encoding, JSON, missing fields, wrong types) are handled here;
    content rules (known categories, non-empty text, length bounds) belong to the pandera schemas.
    """
    _check_on_error(on_error)
    path = Path(path)
    report = report if report is not None else ReadReport(str(path))
    for lineno, raw in _raw_lines(path, report, on_error):
        if not raw.strip():
            report.blank_lines += 1
            continue
        try:
            record = _parse_arxiv_line(raw, path, lineno)
        except DataError as err:
            if on_error == "raise":
                raise
            report.skip(err)
            continue
        report.records += 1
        yield record
    if report.records == 0:
        what = (
            "the file is empty"
            if report.n_skipped == 0
            else (f"all {report.n_skipped} non-blank lines were invalid")
        )
        raise DataError(f"no usable records: {what}", path=path, rule="non_empty_file")


def read_arxiv_frame(
    path: str | Path, *, on_error: OnError = "raise", report: ReadReport | None = None
) -> pd.DataFrame:
    """All records as a DataFrame with a derived `primary` column (first category code) and a
    `source` column (the record's own, else the file name)."""
    df = pd.DataFrame.from_records(
        iter_arxiv_jsonl(path, on_error=on_error, report=report),
        columns=[*ARXIV_FIELDS, SOURCE_FIELD, "line"],
    )
    df[SOURCE_FIELD] = df[SOURCE_FIELD].fillna(Path(path).name)
    df["primary"] = df["categories"].str.split().str[0].fillna("")
    return df


def resolve_raw_paths(patterns: str | Path | list[str | Path]) -> list[Path]:
    """Files from a path, a glob or a list of either, in the order given (globs sorted within).

    A missing file or a glob that matches nothing is an error naming it: a silently shorter file
    list would train on less data than configured.
    """
    items = [patterns] if isinstance(patterns, str | Path) else list(patterns)
    if not items:
        raise DataError("no raw files configured (data.raw_paths is empty)", rule="file_exists")
    out: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            found = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
            if not found:
                raise DataError(
                    "the pattern matches no file: check data.raw_paths", path=text,
                    rule="file_exists",
                )  # fmt: skip
        else:
            found = [Path(text)]
            if not found[0].is_file():
                raise DataError(
                    "file not found: fix or drop it in data.raw_paths", path=text,
                    rule="file_exists",
                )  # fmt: skip
        for p in found:
            if not os.access(p, os.R_OK):
                raise DataError(
                    "file is not readable (permissions): fix them or drop it from data.raw_paths",
                    path=p,
                    rule="file_readable",
                )
        out += [p for p in found if p not in out]
    return out


def read_arxiv_files(
    paths: list[Path], *, on_error: OnError = "raise", max_examples: int = 5
) -> tuple[pd.DataFrame, list[ReadReport]]:
    """Every file's records in one frame; `file` is the file's position in `paths`, which
    de-duplication uses as the tie-break between copies of one paper."""
    frames, reports = [], []
    for i, path in enumerate(paths):
        report = ReadReport(str(path), max_examples=max_examples)
        df = read_arxiv_frame(path, on_error=on_error, report=report)
        df["file"] = i
        frames.append(df)
        reports.append(report)
    return pd.concat(frames, ignore_index=True), reports


def _parse_arxiv_line(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"invalid UTF-8 byte {raw[e.start : e.start + 1]!r} at byte offset {e.start}",
            path=path,
            line=lineno,
            rule="utf8",
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"malformed JSON: {e.msg} (column {e.colno})", path=path, line=lineno, rule="json"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno, rule="json"
        )
    missing = [k for k in ARXIV_FIELDS if obj.get(k) is None]
    if missing:
        raise DataError(
            f"missing required field(s) {', '.join(missing)}",
            path=path,
            line=lineno,
            rule="required_fields",
        )
    out: dict[str, Any] = {}
    for key in ARXIV_FIELDS:
        value = obj[key]
        if (
            key == "categories"
            and isinstance(value, list)
            and all(isinstance(v, str) for v in value)
        ):
            value = " ".join(value)
        if not isinstance(value, str):
            raise DataError(
                f"field {key!r} must be a string, got {type(value).__name__}",
                path=path,
                line=lineno,
                rule="field_type",
            )
        try:  # a JSON escape like "\ud800" decodes to a lone surrogate that no writer can encode
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"field {key!r} contains an unpaired surrogate {value[e.start]!r} "
                "(a bad \\u escape)",
                path=path,
                line=lineno,
                rule="utf8",
            ) from None
        out[key] = value
    source = obj.get(SOURCE_FIELD)
    if source is not None and not (isinstance(source, str) and source.strip()):
        raise DataError(
            f"field {SOURCE_FIELD!r} must be a non-empty string when present, got {source!r}",
            path=path,
            line=lineno,
            rule="field_type",
        )
    out[SOURCE_FIELD] = source.strip() if source else None
    out["line"] = lineno
    return out


def read_mqp_csv(
    path: str | Path, *, on_error: OnError = "raise", report: ReadReport | None = None
) -> list[dict[str, Any]]:
    """Read the medical question pairs CSV (no header: dr_id, question_1, question_2, label).

    Returns rows with a `line` key. 3k rows, so a list is fine; it still reads row by row so a bad
    row is reported with its line number.
    """
    _check_on_error(on_error)
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path, rule="file_exists")
    report = report if report is not None else ReadReport(str(path))
    rows: list[dict[str, Any]] = []
    # surrogateescape keeps undecodable bytes visible so we can name the line they are on
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        for fields in _csv_rows(reader, path):
            lineno = reader.line_num
            report.lines = lineno
            if not fields or all(not x.strip() for x in fields):
                report.blank_lines += 1
                continue
            if report.records == 0 and report.n_skipped == 0 and tuple(fields) == MQP_COLUMNS:
                log.warning("%s:%d: skipping a header row (the format has none)", path, lineno)
                continue
            try:
                rows.append(_parse_mqp_row(fields, path, lineno))
                report.records += 1
            except DataError as err:
                if on_error == "raise":
                    raise
                report.skip(err)
    if not rows:
        raise DataError(
            "no usable rows: the file is empty or every row is invalid",
            path=path,
            rule="non_empty_file",
        )
    return rows


def _csv_rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """csv.reader, but a structural CSV error (e.g. an oversized field) names file and line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(
                f"unreadable CSV: {e}", path=path, line=reader.line_num, rule="csv"
            ) from None


def _parse_mqp_row(fields: list[str], path: Path, lineno: int) -> dict[str, Any]:
    if len(fields) != len(MQP_COLUMNS):
        raise DataError(
            f"expected {len(MQP_COLUMNS)} columns ({', '.join(MQP_COLUMNS)}), got {len(fields)}",
            path=path,
            line=lineno,
            rule="column_count",
        )
    for name, value in zip(MQP_COLUMNS, fields, strict=True):
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            raise DataError(
                f"invalid UTF-8 in column {name!r}", path=path, line=lineno, rule="utf8"
            )
    dr_id, q1, q2, label = (x.strip() for x in fields)
    if not (dr_id.isascii() and dr_id.isdigit()):  # '²'.isdigit() is True, int('²') fails
        raise DataError(
            f"dr_id must be a non-negative integer, got {dr_id!r}",
            path=path,
            line=lineno,
            rule="dr_id_int",
        )
    if label not in ("0", "1"):
        raise DataError(
            f"label must be 0 or 1, got {label!r}", path=path, line=lineno, rule="label_binary"
        )
    for name, q in (("question_1", q1), ("question_2", q2)):
        if not q:
            raise DataError(f"{name} is empty", path=path, line=lineno, rule="non_empty_text")
    return {
        "dr_id": int(dr_id),
        "question_1": q1,
        "question_2": q2,
        "label": int(label),
        "line": lineno,
    }
