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


def raw_schema() -> pa.DataFrameSchema:
    """Rules for records as read from a source, before cleaning. Duplicates are not errors here:
    prepare removes them and reports how many."""
    return pa.DataFrameSchema(
        {
            "id": pa.Column(
                str,
                [
                    rule("non_empty_id", "id must not be empty", _non_empty),
                    rule(
                        "id_format",
                        "id must look like 2101.00001 or hep-th/9901001",
                        lambda s: s.str.match(ID_PATTERN),
                    ),
                ],
            ),
            "title": pa.Column(str, rule("non_empty_title", "title must not be empty", _non_empty)),
            "abstract": pa.Column(
                str, rule("non_empty_abstract", "abstract must not be empty", _non_empty)
            ),
            "categories": pa.Column(
                str,
                [
                    rule("non_empty_categories", "categories must not be empty", _non_empty),
                    rule(
                        "category_format",
                        "every category must look like cs.LG or hep-th",
                        lambda s: s.str.match(CATEGORIES_PATTERN),
                    ),
                ],
            ),
            "primary": pa.Column(
                str, rule("known_category", "primary category is not in the arXiv taxonomy", _known)
            ),
            "update_date": pa.Column(
                str,
                [
                    rule(
                        "date_format",
                        "update_date must be YYYY-MM-DD",
                        lambda s: s.str.match(DATE_PATTERN) & _valid_date(s),
                    ),
                ],
            ),
        },
        strict=False,
        coerce=False,
    )


def processed_schema(labels: Iterable[str], limits: dict[str, int]) -> pa.DataFrameSchema:
    """Rules for one processed split: what every model and the serving layer may rely on."""
    labels = sorted(labels)

    def length(col: str, lo: int, hi: int) -> pa.Check:
        return rule(
            f"{col}_length",
            f"{col} length must be within [{lo}, {hi}] characters",
            lambda s: s.str.len().between(lo, hi),
        )

    return pa.DataFrameSchema(
        {
            "id": pa.Column(
                str,
                [
                    rule("non_empty_id", "id must not be empty", _non_empty),
                    rule(
                        "id_format",
                        "id must look like 2101.00001 or hep-th/9901001",
                        lambda s: s.str.match(ID_PATTERN),
                    ),
                    rule(
                        "unique_id",
                        "id must be unique within the split",
                        lambda s: ~s.duplicated(keep=False),
                    ),
                ],
            ),
            "title": pa.Column(
                str,
                [
                    rule("non_empty_title", "title must not be empty", _non_empty),
                    length("title", limits["title_min_chars"], limits["title_max_chars"]),
                ],
            ),
            "abstract": pa.Column(
                str,
                [
                    rule("non_empty_abstract", "abstract must not be empty", _non_empty),
                    length("abstract", limits["abstract_min_chars"], limits["abstract_max_chars"]),
                ],
            ),
            "label": pa.Column(
                str,
                rule(
                    "known_label",
                    f"label must be one of labels.json ({len(labels)} labels)",
                    lambda s: s.isin(labels),
                ),
            ),
            "primary_category": pa.Column(
                str, rule("known_category", "primary category is not in the arXiv taxonomy", _known)
            ),
            "update_date": pa.Column(
                str,
                rule(
                    "date_format",
                    "update_date must be YYYY-MM-DD",
                    lambda s: s.str.match(DATE_PATTERN) & _valid_date(s),
                ),
            ),
        },
        strict=False,
        coerce=False,
    )
