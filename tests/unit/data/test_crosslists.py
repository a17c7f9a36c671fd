"""Listed category sets and which rows can be trusted for them."""

from __future__ import annotations

import pandas as pd

from paperops.data.crosslists import (
    PARTIAL_CATEGORIES_SOURCES,
    frequent_labels,
    label_sets,
    listed_set,
    reliable_mask,
    unreliable_sources,
)


def test_listed_set_is_canonical_primary_first_and_refuses_coarse_or_unknown_codes() -> None:
    assert listed_set("cs.LG stat.ML cs.LG") == ("cs.LG", "stat.ML")
    assert listed_set("math.MP hep-th")[1] == "hep-th"  # aliases resolve to one code
    assert listed_set("astro-ph.GA astro-ph") is None  # which astro-ph sub-class? unknown
    assert listed_set("cs.LG not-a-code") is None
    assert listed_set("") is None


def test_reliable_rows_exclude_named_sources_and_unreadable_lists() -> None:
    frame = pd.DataFrame(
        {
            "categories": ["cs.LG stat.ML", "cs.LG", "cs.CV astro-ph", "quant-ph"],
            "source": ["good", "partial/feed", "good", "good"],
            "label": ["cs.LG", "cs.LG", "cs.CV", "quant-ph"],
        }
    )
    assert reliable_mask(frame, ["partial/feed"]).tolist() == [True, False, False, True]
    assert label_sets(frame) == [("cs.LG", "stat.ML"), ("cs.LG",), ("cs.CV",), ("quant-ph",)]


def test_unreliable_sources_join_archive_only_and_partial_sources() -> None:
    meta = {"archive_only_sources": ["iopwsy/arXiv_cond-mat"]}
    assert unreliable_sources(meta) == sorted(
        ["iopwsy/arXiv_cond-mat", *PARTIAL_CATEGORIES_SOURCES]
    )
    assert unreliable_sources({}, partial=[]) == []


def test_frequent_labels_count_primaries_and_cross_lists() -> None:
    sets = [("cs.LG", "stat.ML"), ("stat.ML",), ("cs.CV",)]
    assert frequent_labels(sets, 2) == ["stat.ML"]
    assert frequent_labels(sets, 1) == ["cs.CV", "cs.LG", "stat.ML"]
