"""The language-model corpus rules (pandera): schema, non-empty and bounded text, unique ids, no
document in two splits. `validate_frames` reports every broken rule with examples, so a bad
corpus stops `dvc repro` with a readable reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import pandera.pandas as pa

from paperops.data.errors import DataError
from paperops.data.schemas import rule
from paperops.data.validate import (
    ValidationReport,
    Violation,
    describe_row,
    schema_violations,
)

SPLITS = ("train", "val", "test")


def text_key(s: pd.Series) -> pd.Series:
    """Lower-case, punctuation and spacing removed: 'What is X?' and 'what is x' are one text for
    the grouping and the cross-split rule, so a trivial variant cannot leak into test."""
    return s.str.lower().str.replace(r"[\W_]+", "", regex=True)


# pandera's own checks, renamed to the corpus rules they implement
_PANDERA_RULES = {"column_in_dataframe": "text_column", "dtype": "text_column"}


class CorpusValidationError(DataError):
    """The prepared corpus breaks a rule; `.report` has every violation (for validation.json)."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        rules = sorted({v.rule for v in report.violations})
        super().__init__(
            f"corpus violates {len(rules)} rule(s), nothing written:\n{report.render()}",
            path=report.target,
            rule=",".join(rules),
        )


def corpus_schema(limits: Mapping[str, int]) -> pa.DataFrameSchema:
    """Rules for one corpus split: what the LM's data loading may rely on."""
    lo, hi = limits["min_chars"], limits["max_chars"]
    return pa.DataFrameSchema(
        {
            "text": pa.Column(
                str,
                [
                    rule(
                        "non_empty_text",
                        "text must not be empty or whitespace only",
                        lambda s: s.str.strip().str.len() > 0,
                    ),
                    rule(
                        "text_length",
                        f"text length must be within [{lo}, {hi}] characters",
                        lambda s: s.str.len().between(lo, hi),
                    ),
                    rule(
                        "unique_text",
                        "the same text must not appear twice in a split",
                        lambda s: ~text_key(s).duplicated(keep=False),
                    ),
                ],
                nullable=False,
            )
        },
        strict=False,
        coerce=False,
    )


def _describable(df: pd.DataFrame) -> pd.DataFrame:
    """describe_row names rows by `line` and `id`; give it our traceability columns."""
    extra = {}
    if "source_row" in df.columns and "line" not in df.columns:
        extra["line"] = df["source_row"]
    if "doc_id" in df.columns and "id" not in df.columns:
        extra["id"] = df["doc_id"]
    return df.assign(**extra) if extra else df


def validate_frames(
    splits: Mapping[str, pd.DataFrame],
    limits: Mapping[str, int],
    min_rows: Mapping[str, int],
    *,
    target: str,
    max_examples: int = 5,
) -> ValidationReport:
    """Every per-split rule plus the cross-split one; the report names rule, split and rows."""
    report = ValidationReport(target)
    add = report.violations.append
    schema = corpus_schema(limits)
    for name in SPLITS:
        if name not in splits:
            add(Violation("split_present", name, f"{name}.parquet is missing", 0))
    keys: dict[str, pd.Series] = {}
    for name, df in splits.items():
        report.rows += len(df)
        found, _ = schema_violations(_describable(df), schema, name, max_examples)
        for v in found:
            v.rule = _PANDERA_RULES.get(v.rule, v.rule)
            if v.rule == "text_column":
                v.message = f"a string column `text` is required ({v.message})"
        report.violations += found
        need = int(min_rows.get(name, 0))
        if len(df) < need:
            add(Violation("min_rows", name, f"{len(df)} rows < required {need}", len(df)))
        if "text" in df.columns and pd.api.types.is_string_dtype(df["text"]):
            keys[name] = text_key(df["text"].fillna(""))
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = set(keys[a]) & set(keys[b])
            if shared:
                df = _describable(splits[b])
                hit = keys[b].isin(shared)
                add(
                    Violation(
                        "no_cross_split_text",
                        f"{a}/{b}",
                        "the same (normalised) text is in two splits",
                        len(shared),
                        [
                            f"{describe_row(df, idx)}: {str(df.at[idx, 'text'])[:80]!r}"
                            for idx in df.index[hit][:max_examples]
                        ],
                    )
                )
    return report
