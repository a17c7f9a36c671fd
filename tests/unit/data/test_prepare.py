"""prepare: labels, cleaning, dedupe, rare classes, splits, outputs and atomicity."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from paperops.data.errors import DataError
from paperops.data.prepare import PrepareConfig, PrepareResult, prepare
from paperops.data.splits import stratified_split
from paperops.data.text import dedupe_key
from paperops.data.validate import SPLITS
from tests.conftest import DEFAULT_COUNTS, make_records, write_jsonl

COLUMNS = [
    "id",
    "title",
    "abstract",
    "label",
    "primary_category",
    "categories",
    "update_date",
    "source",
    "line",
]
FRACTIONS = {"train": 0.7, "val": 0.1, "calibration": 0.1, "test": 0.1}
ABSTRACT = "We study the spectral gap of random regular graphs and prove a sharp bound on it."


def paper(i: int, primary: str = "cs.LG", **changes: Any) -> dict[str, Any]:
    """One hand-made record; `i` makes the id and the text unique."""
    return {
        "id": f"2103.{i:05d}",
        "title": f"On the spectral gap, part {i}",
        "abstract": f"{ABSTRACT} Case {i}.",
        "categories": primary,
        "update_date": "2021-03-15",
        **changes,
    }


def run(tmp_path: Path, records: list, **cfg: Any) -> PrepareResult:
    raw = write_jsonl(tmp_path / "raw.jsonl", records)
    cfg.setdefault("min_count", 4)
    return prepare(PrepareConfig(raw_paths=raw, output_dir=tmp_path / "processed", **cfg))


def load(out: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(out / f"{s}.parquet") for s in SPLITS}


def load_all(out: Path) -> pd.DataFrame:
    return pd.concat([df.assign(split=s) for s, df in load(out).items()], ignore_index=True)


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


# --- labels ---------------------------------------------------------------------------------


def test_archive_labels_map_legacy_and_alias_codes(tmp_path: Path) -> None:
    records = make_records({"chao-dyn": 5, "funct-an": 5, "cs.SY": 5, "cs.LG": 5, "hep-th": 4})
    result = run(tmp_path, records)
    assert result.labels == ["cs", "eess", "hep-th", "math", "nlin"]
    df = load_all(result.output_dir)
    by_primary = dict(zip(df["categories"].str.split().str[0], df["label"], strict=True))
    assert by_primary == {
        "chao-dyn": "nlin",
        "funct-an": "math",
        "cs.SY": "eess",
        "cs.LG": "cs",
        "hep-th": "hep-th",
    }
    canon = dict(zip(df["categories"].str.split().str[0], df["primary_category"], strict=True))
    assert canon == {
        "chao-dyn": "nlin.CD",
        "funct-an": "math.FA",
        "cs.SY": "eess.SY",
        "cs.LG": "cs.LG",
        "hep-th": "hep-th",
    }
    assert df["label"].value_counts().to_dict() == {
        "cs": 5,
        "eess": 5,
        "math": 5,
        "nlin": 5,
        "hep-th": 4,
    }


def test_category_labels_merge_legacy_and_drop_coarse(tmp_path: Path) -> None:
    records = make_records(
        {"funct-an": 2, "math.FA": 3, "cs.LG": 6, "cond-mat": 3, "cs": 2, "hep-th": 4}
    )
    result = run(tmp_path, records, label_level="category")
    assert result.labels == ["cs.LG", "hep-th", "math.FA"]
    assert result.dropped == {"coarse_label_at_category_level": 5}
    df = load_all(result.output_dir)
    assert df["label"].value_counts().to_dict() == {"cs.LG": 6, "math.FA": 5, "hep-th": 4}
    stats = json.loads((result.output_dir / "stats.json").read_text())
    assert stats["dropped"] == {"coarse_label_at_category_level": 5}
    card = (result.output_dir / "data_card.md").read_text()
    assert "`coarse_label_at_category_level` | 5 |" in card


def test_archive_level_keeps_coarse_codes(tmp_path: Path) -> None:
    result = run(tmp_path, make_records({"cond-mat": 4, "cond-mat.str-el": 2, "cs": 4}))
    assert result.labels == ["cond-mat", "cs"]
    assert result.counts == {"train": 4, "val": 2, "calibration": 2, "test": 2}
    assert result.dropped == {}


def test_whitespace_cleaned_tex_kept(tmp_path: Path) -> None:
    title = "  Bounds on\t$\\alpha$-stable \n\n processes  "
    abstract = "We show  $\\|u\\|_{L^2} \\le C\\,\\mathcal{O}(n^{-1/2})$\r\nfor\u00a0all $n$. " * 2
    records = [paper(1, title=title, abstract=abstract)] + [paper(i) for i in range(2, 6)]
    df = load_all(run(tmp_path, records).output_dir)
    row = df.set_index("id").loc["2103.00001"]
    assert row["title"] == "Bounds on $\\alpha$-stable processes"
    sentence = "We show $\\|u\\|_{L^2} \\le C\\,\\mathcal{O}(n^{-1/2})$ for all $n$."
    assert row["abstract"] == f"{sentence} {sentence}"
    assert row["line"] == 1


# --- bad rows -------------------------------------------------------------------------------


def test_unknown_category_raises_naming_rule_and_line(tmp_path: Path) -> None:
    records = [paper(i) for i in range(1, 7)] + [paper(7, "cs.XX")] + [paper(8)]
    with pytest.raises(DataError) as info:
        run(tmp_path, records)
    msg = str(info.value)
    assert info.value.rule == "raw_schema"
    assert "[known_category] raw.primary" in msg
    assert str(tmp_path / "raw.jsonl") in msg and "raw.jsonl line 7 id=2103.00007: 'cs.XX'" in msg
    assert "use --on-error skip" in msg
    assert not (tmp_path / "processed").exists()


def test_unknown_category_skipped_and_counted(tmp_path: Path) -> None:
    records = [paper(i) for i in range(1, 7)] + [paper(7, "cs.XX")] + [paper(8)]
    result = run(tmp_path, records, on_error="skip")
    assert result.dropped == {"known_category": 1}
    df = load_all(result.output_dir)
    assert len(df) == 7
    assert "2103.00007" not in set(df["id"])
    stats = json.loads((result.output_dir / "stats.json").read_text())
    assert stats["rows_read"] == 8
    examples = stats["dropped_examples"]["known_category"]
    assert examples == ["raw.jsonl line 7 id=2103.00007: 'cs.XX'"]


def test_every_dropped_row_counted_once(tmp_path: Path) -> None:
    """rows_read == rows_out + the sum of row-level drop reasons, one reason per row."""
    good = [paper(i) for i in range(1, 9)]
    bad = [
        paper(20, categories=""),  # breaks three raw rules; counted once
        paper(21, "nope.XX"),
        paper(22, id="21.3"),
        paper(23, update_date="2021-02-30"),
        paper(24, title="   "),
        paper(25, title="Tiny"),
        paper(26, abstract="x" * 6001),
        paper(27, abstract="Too short to be an abstract."),
        {**paper(3), "title": "ON THE SPECTRAL GAP   part 3!", "id": "2103.00028"},
        {**paper(4), "update_date": "2020-01-01"},  # same id as a good one, older
        paper(29, "q-fin.ST"),
        paper(30, "q-fin.ST"),
    ]
    lines = [*good, *bad, "{broken json"]
    result = run(tmp_path, lines, on_error="skip")
    assert result.dropped == {
        "non_empty_categories": 1,
        "known_category": 1,
        "id_format": 1,
        "date_format": 1,
        "non_empty_title": 1,
        "title_too_short": 1,
        "abstract_too_long": 1,
        "abstract_too_short": 1,
        "duplicate_text": 1,
        "duplicate_id": 1,
        "rare_class": 2,
        "json": 1,
    }
    stats = json.loads((result.output_dir / "stats.json").read_text())
    assert stats["rows_read"] == 20
    assert stats["rows_out"] == 8
    assert stats["rows_read"] - stats["rows_out"] == sum(stats["dropped"].values()) - 1
    assert stats["rare_classes"] == {"q-fin": 2}
    assert set(load_all(result.output_dir)["id"]) == {f"2103.{i:05d}" for i in range(1, 9)}


# --- dedupe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("newest_first", [True, False])
def test_dedupe_by_id_keeps_newest_whatever_the_order(tmp_path: Path, newest_first: bool) -> None:
    old = paper(1, title="A preliminary title", update_date="2019-05-01")
    new = paper(1, title="The final title", update_date="2021-07-09", categories="math.PR")
    others = [paper(i) for i in range(2, 6)] + [paper(i, "math.PR") for i in range(6, 9)]
    pair = [new, old] if newest_first else [old, new]
    result = run(tmp_path, [others[0], *pair, *others[1:]])
    assert result.dropped == {"duplicate_id": 1}
    row = load_all(result.output_dir).set_index("id").loc["2103.00001"]
    assert (row["title"], row["update_date"], row["label"]) == (
        "The final title",
        "2021-07-09",
        "math",
    )
    assert row["line"] == (2 if newest_first else 3)


def test_dedupe_by_normalised_text(tmp_path: Path) -> None:
    base = paper(5, title="Deep Learning for Graphs", abstract=ABSTRACT)
    variants = [
        {**base, "id": "2103.00009", "title": "deep learning for graphs"},
        {**base, "id": "2103.00007", "title": "Deep  Learning, for Graphs!"},
        {**base, "id": "2103.00008", "abstract": ABSTRACT.upper().replace(" ", "  ")},
        {**base, "id": "2103.00006", "abstract": ABSTRACT.replace(".", " ;")},
    ]
    others = [paper(i) for i in range(10, 14)]
    result = run(tmp_path, [*variants, *others, base])
    assert result.dropped == {"duplicate_text": 4}
    df = load_all(result.output_dir)
    assert len(df) == 5
    kept = df[df["title"].str.lower().str.startswith("deep")]
    assert kept["id"].tolist() == ["2103.00005"]  # the smallest id, not the first line
    assert dedupe_key(df["title"], df["abstract"]).is_unique


def test_output_does_not_depend_on_input_order(tmp_path: Path) -> None:
    records = make_records(DEFAULT_COUNTS)
    dup = {**records[3], "update_date": "2019-01-01", "title": "An older version"}
    records.append(dup)
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    a = run(tmp_path / "a", records)
    b = run(tmp_path / "b", shuffled)
    cols = [c for c in COLUMNS if c != "line"]
    for s in SPLITS:
        pd.testing.assert_frame_equal(load(a.output_dir)[s][cols], load(b.output_dir)[s][cols])


# --- rare classes ---------------------------------------------------------------------------


def test_min_count_drops_and_lists_rare_classes(tmp_path: Path) -> None:
    records = make_records({"cs.LG": 8, "math.AG": 7, "hep-th": 6, "q-bio.NC": 5, "nlin.CD": 2})
    result = run(tmp_path, records, min_count=6)
    assert result.labels == ["cs", "hep-th", "math"]
    assert result.dropped == {"rare_class": 7}
    stats = json.loads((result.output_dir / "stats.json").read_text())
    assert stats["rare_classes"] == {"q-bio": 5, "nlin": 2}
    card = (result.output_dir / "data_card.md").read_text()
    assert "Classes dropped for having fewer than 6 papers: `q-bio` (5), `nlin` (2)." in card


def test_nothing_left_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        run(tmp_path, make_records({"cs.LG": 3, "math.AG": 3}))
    assert info.value.rule == "non_empty_output"
    assert "no rows left after cleaning (min_count=4)" in str(info.value)
    assert "'rare_class': 6" in str(info.value)


@pytest.mark.parametrize("label_level", ["archive", "category"])
def test_every_row_invalid_in_skip_mode_raises(tmp_path: Path, label_level: str) -> None:
    records = [paper(i, "cs.XX") for i in range(1, 6)]
    with pytest.raises(DataError, match=r"no rows left.*'known_category': 5"):
        run(tmp_path, records, on_error="skip", label_level=label_level)


# --- splits ---------------------------------------------------------------------------------

SPLIT_COUNTS = {"cs.LG": 41, "math.AG": 23, "hep-th": 14, "astro-ph.GA": 10, "q-bio.NC": 11}


def test_stratified_split_fractions_and_coverage(tmp_path: Path) -> None:
    result = run(tmp_path, make_records(SPLIT_COUNTS))
    df = load_all(result.output_dir)
    table = pd.crosstab(df["label"], df["split"])
    totals = {"cs": 41, "math": 23, "hep-th": 14, "astro-ph": 10, "q-bio": 11}
    assert table.sum(axis=1).to_dict() == totals
    for label, n in totals.items():
        for s in SPLITS:
            assert abs(table.at[label, s] - FRACTIONS[s] * n) <= 1, (label, s, table.at[label, s])
            assert table.at[label, s] >= 1
    assert result.counts == {s: int(table[s].sum()) for s in SPLITS}
    assert result.counts["train"] == 70  # 29 + 16 + 10 + 7 + 8


def _assignment(out: Path) -> dict[str, str]:
    df = load_all(out)
    return dict(zip(df["id"], df["split"], strict=True))


def test_stratified_split_is_seeded(tmp_path: Path) -> None:
    records = make_records(SPLIT_COUNTS)
    a = _assignment(run(tmp_path / "a", records, seed=1).output_dir)
    b = _assignment(run(tmp_path / "b", records, seed=1).output_dir)
    c = _assignment(run(tmp_path / "c", records, seed=2).output_dir)
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) > 10


def test_splits_do_not_overlap(tmp_path: Path) -> None:
    splits = load(run(tmp_path, make_records(SPLIT_COUNTS)).output_dir)
    ids = [set(df["id"]) for df in splits.values()]
    keys = [set(dedupe_key(df["title"], df["abstract"])) for df in splits.values()]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 99
    assert sum(map(len, keys)) == len(set().union(*keys)) == 99


def test_time_split_orders_by_date(tmp_path: Path) -> None:
    result = run(tmp_path, make_records(SPLIT_COUNTS), split="time")
    splits = load(result.output_dir)
    assert {s: len(df) for s, df in splits.items()} == {
        "train": 69,
        "val": 10,
        "calibration": 10,
        "test": 10,
    }
    order = [splits[s]["update_date"] for s in SPLITS]
    for earlier, later in itertools.pairwise(order):
        assert earlier.max() <= later.min()
    meta = json.loads((result.output_dir / "labels.json").read_text())
    assert meta["split"] == "time"


def test_time_split_breaks_date_ties_by_id(tmp_path: Path) -> None:
    records = [paper(i, update_date="2021-01-01") for i in range(10, 0, -1)]
    splits = load(run(tmp_path, records, split="time").output_dir)
    assert splits["train"]["id"].tolist() == [f"2103.{i:05d}" for i in range(1, 8)]
    assert splits["test"]["id"].tolist() == ["2103.00010"]


@pytest.mark.parametrize(
    "fractions",
    [
        FRACTIONS,
        {"train": 0.05, "val": 0.3, "calibration": 0.3, "test": 0.35},
        {"train": 0.97, "val": 0.01, "calibration": 0.01, "test": 0.01},
    ],
    ids=["default", "tiny-train", "tiny-rest"],
)
@pytest.mark.parametrize("n", [4, 5, 9, 37])
def test_stratified_split_every_split_gets_every_class(fractions: dict, n: int) -> None:
    labels = np.array(["a"] * n + ["b"] * (n + 3))
    out = stratified_split(labels, fractions, seed=0)
    for label in ("a", "b"):
        got = Counter(out[labels == label])
        assert set(got) == set(SPLITS), (label, got)
        assert sum(got.values()) == (labels == label).sum()


# --- outputs --------------------------------------------------------------------------------


def test_outputs(tmp_path: Path) -> None:
    records = [*make_records(DEFAULT_COUNTS), "not json"]
    result = run(tmp_path, records, on_error="skip")
    out = result.output_dir
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.parquet" for s in SPLITS] + ["labels.json", "stats.json", "data_card.md"]
    )
    splits = load(out)
    for df in splits.values():
        assert list(df.columns) == COLUMNS
        assert df["line"].dtype == np.int64
    n = sum(len(df) for df in splits.values())
    assert n == sum(DEFAULT_COUNTS.values()) == sum(result.counts.values())

    meta = json.loads((out / "labels.json").read_text())
    assert [e["label"] for e in meta["labels"]] == ["astro-ph", "cs", "hep-th", "math"]
    assert [e["index"] for e in meta["labels"]] == [0, 1, 2, 3]
    assert [e["name"] for e in meta["labels"]] == [
        "Astrophysics",
        "Computer Science",
        "High Energy Physics - Theory",
        "Mathematics",
    ]
    assert {e["label"]: e["count"] for e in meta["labels"]} == {
        "astro-ph": 10,
        "cs": 24,
        "hep-th": 12,
        "math": 16,
    }
    assert sum(e["count"] for e in meta["labels"]) == n
    raw = tmp_path / "raw.jsonl"
    assert meta["raw_files"] == [
        {"path": str(raw), "sha256": hashlib.sha256(raw.read_bytes()).hexdigest()}
    ]
    assert (meta["label_level"], meta["split"], meta["seed"], meta["min_count"]) == (
        "archive",
        "stratified",
        42,
        4,
    )
    assert meta["fractions"] == FRACTIONS

    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_read"] == n
    assert stats["rows_out"] == n
    assert stats["dropped"] == {"json": 1}
    assert {s: sum(v.values()) for s, v in stats["per_split"].items()} == result.counts

    card = (out / "data_card.md").read_text()
    assert card.startswith("# Data card: arXiv paper classification")
    for reason in stats["dropped"]:
        assert f"| `{reason}` |" in card
    for entry in meta["labels"]:
        assert f"| `{entry['label']}` | {entry['name']} |" in card
    assert (
        f"| **total** | | {' | '.join(f'**{result.counts[s]}**' for s in SPLITS)} | **{n}** |"
        in card
    )


def test_card_lists_every_drop_reason(tmp_path: Path) -> None:
    records = [
        *make_records(DEFAULT_COUNTS),
        paper(1, "cs.XX"),
        paper(2, title="Tiny"),
        b"\xff",
        "[]",
    ]
    result = run(tmp_path, records, on_error="skip")
    assert set(result.dropped) == {"known_category", "title_too_short", "utf8", "json"}
    card = (result.output_dir / "data_card.md").read_text()
    for reason, n in result.dropped.items():
        assert f"| `{reason}` | {n} |" in card


def test_gzip_input(tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl.gz", make_records(DEFAULT_COUNTS), gzip=True)
    result = prepare(PrepareConfig(raw_paths=raw, output_dir=tmp_path / "out", min_count=4))
    assert sum(result.counts.values()) == 62


# --- atomicity ------------------------------------------------------------------------------


def test_failed_run_leaves_previous_output_untouched(tmp_path: Path) -> None:
    first = run(tmp_path, make_records(DEFAULT_COUNTS))
    before = snapshot(first.output_dir)
    bad = [*make_records(DEFAULT_COUNTS), '{"id": "2101.99999", "title": ']
    with pytest.raises(DataError) as info:
        run(tmp_path, bad)
    assert str(info.value).startswith(f"{tmp_path / 'raw.jsonl'}:63: malformed JSON")
    assert snapshot(first.output_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw.jsonl"]


def test_rerun_replaces_output(tmp_path: Path) -> None:
    first = run(tmp_path, make_records(DEFAULT_COUNTS))
    (first.output_dir / "stale.txt").write_text("from an older run")
    second = run(tmp_path, make_records({"cs.LG": 5, "math.AG": 5}, seed=3))
    assert second.output_dir == first.output_dir
    assert not (second.output_dir / "stale.txt").exists()
    meta = json.loads((second.output_dir / "labels.json").read_text())
    assert [e["label"] for e in meta["labels"]] == ["cs", "math"]
    assert sum(len(df) for df in load(second.output_dir).values()) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw.jsonl"]


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"fractions": {"train": 0.7, "val": 0.1, "calibration": 0.1, "test": 0.05}},
            "fractions must be positive and sum to 1",
        ),
        (
            {"fractions": {"train": 0.8, "val": 0.3, "calibration": 0.0, "test": -0.1}},
            "fractions must be positive",
        ),
        ({"fractions": {"train": 0.8, "test": 0.2}}, "fractions must have exactly the keys"),
        ({"label_level": "group"}, "label_level must be one of"),
        ({"split": "random"}, "split must be one of"),
        ({"min_count": 3}, "min_count must be >= 4"),
    ],
    ids=["sum", "negative", "keys", "label_level", "split", "min_count"],
)
def test_invalid_config(tmp_path: Path, changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PrepareConfig(raw_paths=tmp_path / "raw.jsonl", output_dir=tmp_path / "out", **changes)


def test_invalid_on_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        run(tmp_path, make_records(DEFAULT_COUNTS), on_error="warn")
