"""pandera schemas for raw records and processed splits.

Every check carries a rule name (the `error` text starts with it), so a failure report can say
which rule broke, in which column, on which rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd
import pandera.pandas as pa

from paperops.data import taxonomy

# New-style ids (0704.0001, 2101.00001) and old-style ids (hep-th/9901001, math.AG/9901001)
ID_PATTERN = r"^(\d{4}\.\d{4,5}|[a-z]+(-[a-z]+)*(\.[A-Z]{2})?/\d{7})$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_CATEGORY = r"[a-z]+(-[a-z]+)*(\.[A-Za-z]+(-[a-z]+)?)?"
CATEGORIES_PATTERN = rf"^\s*{_CATEGORY}(\s+{_CATEGORY})*\s*$"


def rule(name: str, description: str, fn: Callable[[pd.Series], pd.Series]) -> pa.Check:
    """A vectorised check whose failure message reads '<rule>: <description>'."""
    return pa.Check(fn, name=name, error=f"{name}: {description}")


def _non_empty(s: pd.Series) -> pd.Series:
    return s.str.strip().str.len() > 0


def _valid_date(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, format="%Y-%m-%d", errors="coerce").notna()


def _known(s: pd.Series) -> pd.Series:
    return s.map(taxonomy.is_known)


def _id_checks() -> list[pa.Check]:
    return [
        rule("non_empty_id", "id must not be empty", _non_empty),
        rule(
            "id_format",
            "id must look like 2101.00001 or hep-th/9901001",
            lambda s: s.str.match(ID_PATTERN),
        ),
    ]


def _non_empty_text(col: str) -> pa.Check:
    return rule(f"non_empty_{col}", f"{col} must not be empty", _non_empty)


def _known_category() -> pa.Column:
    return pa.Column(
        str, rule("known_category", "primary category is not in the arXiv taxonomy", _known)
    )


def _date() -> pa.Column:
    return pa.Column(
        str,
        rule(
            "date_format",
            "update_date must be YYYY-MM-DD",
            lambda s: s.str.match(DATE_PATTERN) & _valid_date(s),
        ),
    )


def raw_schema() -> pa.DataFrameSchema:
    """Rules for records as read from a source, before cleaning. Duplicates are not errors here:
    prepare removes them and reports how many."""
    return pa.DataFrameSchema(
        {
            "id": pa.Column(str, _id_checks()),
            "title": pa.Column(str, _non_empty_text("title")),
            "abstract": pa.Column(str, _non_empty_text("abstract")),
            "categories": pa.Column(
                str,
                [
                    _non_empty_text("categories"),
                    rule(
                        "category_format",
                        "every category must look like cs.LG or hep-th",
                        lambda s: s.str.match(CATEGORIES_PATTERN),
                    ),
                ],
            ),
            "primary": _known_category(),
            "update_date": _date(),
        },
        strict=False,
        coerce=False,
    )


def processed_schema(labels: Iterable[str], limits: dict[str, int]) -> pa.DataFrameSchema:
    """Rules for one processed split: what every model and the serving layer may rely on."""
    labels = sorted(labels)

    def text(col: str) -> pa.Column:
        lo, hi = limits[f"{col}_min_chars"], limits[f"{col}_max_chars"]
        return pa.Column(
            str,
            [
                _non_empty_text(col),
                rule(
                    f"{col}_length",
                    f"{col} length must be within [{lo}, {hi}] characters",
                    lambda s: s.str.len().between(lo, hi),
                ),
            ],
        )

    unique = rule(
        "unique_id", "id must be unique within the split", lambda s: ~s.duplicated(keep=False)
    )
    return pa.DataFrameSchema(
        {
            "id": pa.Column(str, [*_id_checks(), unique]),
            "title": text("title"),
            "abstract": text("abstract"),
            "label": pa.Column(
                str,
                rule(
                    "known_label",
                    f"label must be one of labels.json ({len(labels)} labels)",
                    lambda s: s.isin(labels),
                ),
            ),
            "primary_category": _known_category(),
            "update_date": _date(),
        },
        strict=False,
        coerce=False,
    )
