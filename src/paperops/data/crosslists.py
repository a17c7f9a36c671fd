"""A paper's listed categories (primary + cross-lists) and which rows can be trusted for them.

About half of arXiv papers are listed in more than one category (48% of the augment file's rows);
prepare keeps each row's full `categories` string (primary first) and its `source`, and this module
turns them into the fine-level label *sets* the cross-list head trains and is measured on.

Not every source knows the whole list (the PROVENANCE "label caveats"):
- `iopwsy/arXiv_cond-mat`: the archive `cond-mat` only, no sub-class, no cross-lists;
- `rocksonchang/arXiv-metadata`: categories rebuilt from old-style ids, cross-lists unknown;
- `xmkxabc/daily-arXiv-ai-enhanced`: most of its files came from the arXiv API with only the
  primary (`cate`), so 11% of its 5,163 rows list more than one category against 52% for
  KAFKA2306's rows of the very same feeds: its cross-lists are missing, not absent.
Rows of those sources (`data.archive_only_sources` + `train.cross_lists.partial_sources`) and rows
whose list holds an archive-level code of an archive that has sub-classes (47 old rows of
arxiv-browse and the Kaggle extract cross-list a bare `astro-ph`, from before its sub-classes:
which one is unknown) are unreliable: a model trained on them would learn that real cross-lists
are wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from paperops.data import taxonomy

# Sources whose primary is right but whose cross-lists are (mostly) missing; see the docstring.
PARTIAL_CATEGORIES_SOURCES = ("xmkxabc/daily-arXiv-ai-enhanced",)


def listed_set(categories: str) -> tuple[str, ...] | None:
    """The canonical fine codes of a `categories` string, primary first, repeats dropped; None
    when a code is unknown or only an archive that has sub-classes (the list is then unusable)."""
    out: list[str] = []
    for code in str(categories).split():
        try:
            cat = taxonomy.lookup(code)
        except ValueError:
            return None
        if cat.coarse:
            return None
        if cat.code not in out:
            out.append(cat.code)
    return tuple(out) or None


def unreliable_sources(
    meta: dict[str, object], partial: Iterable[str] = PARTIAL_CATEGORIES_SOURCES
) -> list[str]:
    """The sources whose rows must not train or score cross-lists: the `archive_only_sources`
    a prepared directory's labels.json records, plus `partial` (sources whose primaries are right
    but whose cross-lists are missing; `train.cross_lists.partial_sources`)."""
    only = meta.get("archive_only_sources")
    named = [str(v) for v in only] if isinstance(only, list) else []
    return sorted({*named, *map(str, partial)})


def reliable_mask(frame: pd.DataFrame, unreliable: Iterable[str]) -> np.ndarray:
    """True for rows whose full category list can be trusted: a source not in `unreliable` and a
    list `listed_set` can read."""
    bad = set(unreliable)
    ok_source = ~frame["source"].isin(bad).to_numpy()
    ok_list = np.array([listed_set(c) is not None for c in frame["categories"]], dtype=bool)
    return ok_source & ok_list


def label_sets(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    """`listed_set` of every row (callers filter with `reliable_mask` first; an unusable list
    falls back to the row's own label so the lists stay aligned with the frame)."""
    return [
        listed_set(c) or (str(lab),)
        for c, lab in zip(frame["categories"], frame["label"], strict=True)
    ]


def frequent_labels(sets: Sequence[Sequence[str]], min_papers: int) -> list[str]:
    """Sorted labels listed (as primary or cross-list) by at least `min_papers` of `sets`."""
    counts = Counter(lab for s in sets for lab in s)
    return sorted(lab for lab, n in counts.items() if n >= min_papers)
