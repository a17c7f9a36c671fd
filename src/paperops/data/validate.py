"""Data validation: pandera schemas per split plus the rules that span splits.

A failed validation stops the pipeline (non-zero exit, so `dvc repro` stops) with a report that
names each broken rule, where it broke, how many rows, and example rows with their source line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa

from paperops.data.errors import DataError
from paperops.data.schemas import processed_schema, raw_schema
from paperops.data.sources import ReadReport, read_arxiv_frame
from paperops.data.splits import SPLITS
from paperops.data.text import dedupe_key
from paperops.io import atomic_write_text


@dataclass
class Violation:
    rule: str
    where: str
    message: str
    count: int
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    target: str
    rows: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "rows": self.rows,
            "violations": [asdict(v) for v in self.violations],
        }

    def render(self) -> str:
        if self.ok:
            return f"OK: {self.target}: {self.rows} rows pass every rule"
        lines = [f"FAILED: {self.target}: {len(self.violations)} rule(s) violated"]
        for v in self.violations:
            lines.append(f"  - [{v.rule}] {v.where}: {v.message} ({v.count} row(s))")
            lines += [f"      e.g. {ex}" for ex in v.examples]
        return "\n".join(lines)


def describe_row(df: pd.DataFrame, idx: Any) -> str:
    """'[raw.jsonl ]line 12 id=2101.00001' — enough to find the row in the source file."""
    parts = []
    if "path" in df.columns:
        parts.append(str(df.at[idx, "path"]))
    if "line" in df.columns:
        parts.append(f"line {df.at[idx, 'line']}")
    if "id" in df.columns:
        parts.append(f"id={df.at[idx, 'id']!s:.40}")
    return " ".join(parts) or f"row {idx}"


def schema_violations(
    df: pd.DataFrame, schema: pa.DataFrameSchema, where: str, max_examples: int = 5
) -> tuple[list[Violation], dict[Any, str]]:
    """Run a schema lazily; return one Violation per (column, rule) and the failing rows, each
    mapped to the first rule it broke (so a row that breaks several rules is counted once)."""
    try:
        schema.validate(df, lazy=True)
        return [], {}
    except pa.errors.SchemaErrors as e:
        fc = e.failure_cases
    violations: list[Violation] = []
    bad_rows: dict[Any, str] = {}
    for (column, check), group in fc.groupby(["column", "check"], sort=False, dropna=False):
        check = str(check)
        rule_name, _, message = check.partition(": ")
        if not message:  # pandera's own checks (dtype, nullability, missing column)
            rule_name, message = check.split("(")[0], f"failed pandera check {check}"
        rows = [i for i in group["index"].tolist() if i is not None and not pd.isna(i)]
        for i in rows:
            bad_rows.setdefault(i, rule_name)
        examples = [
            f"{describe_row(df, i)}: {str(df.at[i, column])[:80]!r}"
            if column in df.columns
            else describe_row(df, i)
            for i in rows[:max_examples]
        ]
        if not rows:  # whole-frame failures (e.g. a missing column)
            examples = [f"{v}" for v in group["failure_case"].tolist()[:max_examples]]
        col = "" if column is None or pd.isna(column) else f".{column}"
        violations.append(
            Violation(rule_name, f"{where}{col}", message, max(len(rows), len(group)), examples)
        )
    return violations, bad_rows


def load_splits(output_dir: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    labels_path = output_dir / "labels.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path} not found: run `paperops data prepare` first")
    meta = json.loads(labels_path.read_text())
    splits = {}
    for name in SPLITS:
        path = output_dir / f"{name}.parquet"
        if path.is_file():
            splits[name] = pd.read_parquet(path)
    return splits, meta


def validate_processed(
    output_dir: Path,
    limits: dict[str, int],
    *,
    min_rows_total: int,
    min_train_rows_per_class: int,
    max_examples: int = 5,
) -> ValidationReport:
    """Check every processed split and the rules across them."""
    output_dir = Path(output_dir)
    report = ValidationReport(str(output_dir))
    splits, meta = load_splits(output_dir)
    labels = [entry["label"] for entry in meta["labels"]]
    schema = processed_schema(labels, limits)
    add = report.violations.append

    for name in SPLITS:
        if name not in splits:
            add(Violation("split_present", name, f"{name}.parquet is missing", 0))
    for name, df in splits.items():
        report.rows += len(df)
        found, _ = schema_violations(df, schema, name, max_examples)
        report.violations += found
        if df.empty:
            add(Violation("non_empty_split", name, "split has no rows", 0))

    # No paper may sit in two splits, by id or by (normalised) text.
    keys = {
        n: (set(df["id"]), set(dedupe_key(df["title"], df["abstract"])))
        for n, df in splits.items()
        if {"id", "title", "abstract"} <= set(df.columns)
    }
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ids = keys[a][0] & keys[b][0]
            if ids:
                add(
                    Violation(
                        "no_id_overlap",
                        f"{a}/{b}",
                        "the same id is in two splits",
                        len(ids),
                        sorted(ids)[:max_examples],
                    )
                )
            texts = keys[a][1] & keys[b][1]
            if texts:
                df = splits[b]
                hit = dedupe_key(df["title"], df["abstract"]).isin(texts)
                add(
                    Violation(
                        "no_text_overlap",
                        f"{a}/{b}",
                        "the same normalised title+abstract is in two splits",
                        len(texts),
                        [describe_row(df, i) for i in df.index[hit][:max_examples]],
                    )
                )

    if report.rows < min_rows_total:
        add(
            Violation(
                "min_rows_total",
                "all",
                f"{report.rows} rows < required {min_rows_total}",
                report.rows,
            )
        )
    if "train" in splits and "label" in splits["train"].columns:
        counts = splits["train"]["label"].value_counts()
        few = {
            lab: int(counts.get(lab, 0))
            for lab in labels
            if counts.get(lab, 0) < min_train_rows_per_class
        }
        if few:
            add(
                Violation(
                    "min_train_rows_per_class",
                    "train",
                    f"classes with fewer than {min_train_rows_per_class} training rows",
                    len(few),
                    [f"{k}: {v}" for k, v in list(few.items())[:max_examples]],
                )
            )
    if meta.get("split") == "stratified":
        for name, df in splits.items():
            if "label" not in df.columns:
                continue
            absent = sorted(set(labels) - set(df["label"]))
            if absent:
                add(
                    Violation(
                        "class_in_every_split",
                        name,
                        "a stratified split must contain every class",
                        len(absent),
                        absent[:max_examples],
                    )
                )
    return report


def validate_raw(path: Path, *, max_examples: int = 5) -> ValidationReport:
    """Check a raw file without writing anything: every bad line and rule, not just the first."""
    report = ValidationReport(str(path))
    read = ReadReport(str(path), max_examples=max_examples)
    df = None
    try:
        df = read_arxiv_frame(path, on_error="skip", report=read)
    except DataError as e:  # missing file, or no usable record at all
        report.violations.append(Violation(e.rule or "read", "raw", e.message, 0))
    report.rows = read.lines - read.blank_lines
    for rule_name, n in read.skipped.items():
        report.violations.append(
            Violation(
                rule_name,
                "raw",
                "line could not be read as a record",
                n,
                read.examples.get(rule_name, []),
            )
        )
    if df is not None:
        report.violations += schema_violations(df, raw_schema(), "raw", max_examples)[0]
    return report


def write_report(report: ValidationReport, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(report.to_dict(), indent=2) + "\n")
