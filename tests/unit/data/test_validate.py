"""validate: processed splits (per-split schema and cross-split rules) and raw files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from paperops.data.validate import (
    SPLITS,
    ValidationReport,
    Violation,
    validate_processed,
    validate_raw,
    write_report,
)
from tests.conftest import DEFAULT_COUNTS, make_records, write_jsonl

LIMITS = {
    "title_min_chars": 5,
    "title_max_chars": 500,
    "abstract_min_chars": 40,
    "abstract_max_chars": 6000,
}
N_ROWS = sum(DEFAULT_COUNTS.values())


def check(out: Path, **kw: int) -> ValidationReport:
    kw.setdefault("min_rows_total", 1)
    kw.setdefault("min_train_rows_per_class", 1)
    return validate_processed(out, LIMITS, **kw)


def rules(report: ValidationReport) -> set[str]:
    return {v.rule for v in report.violations}


def only(report: ValidationReport, rule: str) -> Violation:
    found = [v for v in report.violations if v.rule == rule]
    assert len(found) == 1, report.render()
    return found[0]


def edit(out: Path, split: str, fn: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    """Tamper with one split file in place."""
    path = out / f"{split}.parquet"
    df = pd.read_parquet(path)
    result = fn(df)
    (df if result is None else result).to_parquet(path, index=False)


def first(out: Path, split: str) -> pd.Series:
    return pd.read_parquet(out / f"{split}.parquet").iloc[0]


# --- processed ------------------------------------------------------------------------------


def test_good_dir_passes(prepared_dir: Path) -> None:
    report = check(prepared_dir, min_rows_total=N_ROWS, min_train_rows_per_class=6)
    assert report.ok, report.render()
    assert report.rows == N_ROWS
    assert report.render() == f"OK: {prepared_dir}: {N_ROWS} rows pass every rule"


def test_id_overlap_between_splits(prepared_dir: Path) -> None:
    train_id = first(prepared_dir, "train")["id"]

    def move_id(df: pd.DataFrame) -> None:
        df.loc[2, "id"] = train_id

    edit(prepared_dir, "test", move_id)
    report = check(prepared_dir)
    assert rules(report) == {"no_id_overlap"}
    v = only(report, "no_id_overlap")
    assert (v.where, v.count, v.examples) == ("train/test", 1, [train_id])


@pytest.mark.parametrize(
    "variant",
    [str.upper, lambda t: "  " + t.replace(" ", "   ") + " ", lambda t: t.replace(" ", ", ")],
    ids=["case", "spacing", "punctuation"],
)
def test_text_overlap_between_splits(prepared_dir: Path, variant: Callable[[str], str]) -> None:
    row = first(prepared_dir, "train").copy()
    row["id"], row["title"], row["line"] = "2912.99999", variant(row["title"]), 999

    edit(
        prepared_dir,
        "val",
        lambda df: pd.concat([df, row.to_frame().T.astype(df.dtypes)], ignore_index=True),
    )
    report = check(prepared_dir)
    assert rules(report) == {"no_text_overlap"}
    v = only(report, "no_text_overlap")
    assert (v.where, v.count) == ("train/val", 1)
    assert v.examples == ["line 999 id=2912.99999"]


@pytest.mark.parametrize(
    ("column", "value", "expected_rules", "rule"),
    [
        ("title", "   ", {"non_empty_title", "title_length"}, "non_empty_title"),
        ("title", "", {"non_empty_title", "title_length"}, "title_length"),
        ("abstract", "a" * 6001, {"abstract_length"}, "abstract_length"),
        ("abstract", "too short", {"abstract_length"}, "abstract_length"),
        ("label", "cs.XX", {"known_label"}, "known_label"),
        ("primary_category", "cs.XX", {"known_category"}, "known_category"),
        ("id", "paper-1", {"id_format"}, "id_format"),
        ("update_date", "2021-13-01", {"date_format"}, "date_format"),
    ],
    ids=[
        "blank-title",
        "empty-title",
        "long-abstract",
        "short-abstract",
        "unknown-label",
        "unknown-category",
        "bad-id",
        "bad-date",
    ],
)
def test_row_rule_names_rule_and_example_row(
    prepared_dir: Path, column: str, value: str, expected_rules: set[str], rule: str
) -> None:
    row = first(prepared_dir, "train")

    def tamper(df: pd.DataFrame) -> None:
        df.loc[0, column] = value

    edit(prepared_dir, "train", tamper)
    report = check(prepared_dir)
    assert rules(report) == expected_rules, report.render()
    v = only(report, rule)
    assert (v.where, v.count) == (f"train.{column}", 1)
    shown_id = value if column == "id" else row["id"]
    assert v.examples == [f"line {row['line']} id={shown_id}: {value[:80]!r}"]
    assert f"[{rule}] train.{column}" in report.render()


def test_unknown_label_message_counts_labels(prepared_dir: Path) -> None:
    edit(prepared_dir, "train", lambda df: df.assign(label="nope"))
    v = only(check(prepared_dir), "known_label")
    assert v.message == "label must be one of labels.json (4 labels)"
    assert v.count == len(pd.read_parquet(prepared_dir / "train.parquet"))


def test_duplicate_id_within_a_split(prepared_dir: Path) -> None:
    dup = first(prepared_dir, "val")
    edit(prepared_dir, "val", lambda df: pd.concat([df, df.iloc[[0]]], ignore_index=True))
    report = check(prepared_dir)
    assert rules(report) == {"unique_id"}
    v = only(report, "unique_id")
    assert (v.where, v.count) == ("val.id", 2)
    assert v.examples[0] == f"line {dup['line']} id={dup['id']}: {dup['id']!r}"


def test_null_title_is_reported_not_a_crash(prepared_dir: Path) -> None:
    def tamper(df: pd.DataFrame) -> None:
        df.loc[1, "title"] = None

    edit(prepared_dir, "test", tamper)
    report = check(prepared_dir)
    assert "not_nullable" in rules(report)
    assert any(v.where == "test.title" for v in report.violations)


@pytest.mark.parametrize("split", SPLITS)
def test_missing_split_file(prepared_dir: Path, split: str) -> None:
    (prepared_dir / f"{split}.parquet").unlink()
    report = check(prepared_dir)
    assert rules(report) == {"split_present"}
    v = only(report, "split_present")
    assert (v.where, v.message) == (split, f"{split}.parquet is missing")


def test_empty_split(prepared_dir: Path) -> None:
    edit(prepared_dir, "test", lambda df: df.iloc[:0])
    report = check(prepared_dir)
    assert rules(report) == {"non_empty_split", "class_in_every_split"}
    assert only(report, "class_in_every_split").examples == ["astro-ph", "cs", "hep-th", "math"]


def test_min_rows_total(prepared_dir: Path) -> None:
    report = check(prepared_dir, min_rows_total=N_ROWS + 1)
    assert rules(report) == {"min_rows_total"}
    v = only(report, "min_rows_total")
    assert v.message == f"{N_ROWS} rows < required {N_ROWS + 1}"


def test_min_train_rows_per_class(prepared_dir: Path) -> None:
    train = pd.read_parquet(prepared_dir / "train.parquet")["label"].value_counts()
    threshold = int(train["hep-th"]) + 1  # hep-th and astro-ph (fewer papers) fall below
    report = check(prepared_dir, min_train_rows_per_class=threshold)
    assert rules(report) == {"min_train_rows_per_class"}
    v = only(report, "min_train_rows_per_class")
    assert v.count == 2
    assert v.examples == [f"astro-ph: {train['astro-ph']}", f"hep-th: {train['hep-th']}"]


def test_class_in_every_split(prepared_dir: Path) -> None:
    edit(prepared_dir, "val", lambda df: df[df["label"] != "hep-th"])
    report = check(prepared_dir)
    assert rules(report) == {"class_in_every_split"}
    v = only(report, "class_in_every_split")
    assert (v.where, v.count, v.examples) == ("val", 1, ["hep-th"])


def test_time_split_need_not_hold_every_class(prepared_dir: Path) -> None:
    meta = json.loads((prepared_dir / "labels.json").read_text())
    (prepared_dir / "labels.json").write_text(json.dumps({**meta, "split": "time"}))
    edit(prepared_dir, "val", lambda df: df[df["label"] != "hep-th"])
    assert check(prepared_dir).ok


def test_several_rules_reported_at_once(prepared_dir: Path) -> None:
    def tamper(df: pd.DataFrame) -> None:
        df.loc[0, "title"] = ""
        df.loc[1, "label"] = "cs.XX"

    edit(prepared_dir, "train", tamper)
    (prepared_dir / "test.parquet").unlink()
    report = check(prepared_dir, min_rows_total=10_000)
    assert rules(report) == {
        "non_empty_title",
        "title_length",
        "known_label",
        "split_present",
        "min_rows_total",
    }
    text = report.render()
    assert text.startswith(f"FAILED: {prepared_dir}: 5 rule(s) violated")


def test_max_examples(prepared_dir: Path) -> None:
    edit(prepared_dir, "train", lambda df: df.assign(title="x"))
    report = validate_processed(
        prepared_dir, LIMITS, min_rows_total=1, min_train_rows_per_class=1, max_examples=2
    )
    v = only(report, "title_length")
    assert v.count == len(pd.read_parquet(prepared_dir / "train.parquet"))
    assert len(v.examples) == 2


def test_missing_labels_json(prepared_dir: Path) -> None:
    (prepared_dir / "labels.json").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"labels\.json not found: run `paperops data "
        r"prepare` first",
    ):
        check(prepared_dir)


def test_write_report(prepared_dir: Path, tmp_path: Path) -> None:
    edit(prepared_dir, "val", lambda df: df[df["label"] != "cs"])
    report = check(prepared_dir)
    path = tmp_path / "reports" / "data" / "validation.json"
    write_report(report, path)
    data = json.loads(path.read_text())
    assert data["ok"] is False
    assert data["target"] == str(prepared_dir)
    assert data["rows"] == report.rows
    assert data["violations"] == [
        {
            "rule": "class_in_every_split",
            "where": "val",
            "message": "a stratified split must contain every class",
            "count": 1,
            "examples": ["cs"],
        }
    ]
    assert [p.name for p in path.parent.iterdir()] == ["validation.json"]


# --- raw ------------------------------------------------------------------------------------


def test_validate_raw_good_file(raw_file: Path) -> None:
    report = validate_raw(raw_file)
    assert report.ok, report.render()
    assert report.rows == N_ROWS


def test_validate_raw_reports_every_bad_line(tmp_path: Path) -> None:
    good = make_records({"cs.LG": 3})
    bad_cat = {**good[0], "id": "2101.00100", "categories": "cs.XX"}
    bad_date = {**good[0], "id": "2101.00101", "update_date": "21-01-01"}
    no_title = {**good[0], "id": "2101.00102", "title": "  "}
    lines = [*good, "{oops", bad_cat, "", {"id": "2101.00103"}, bad_date, no_title, b"\xc3(", "[1]"]
    path = write_jsonl(tmp_path / "raw.jsonl", lines)
    report = validate_raw(path)
    assert not report.ok
    assert report.rows == 10  # non-blank lines
    by_rule = {v.rule: v for v in report.violations}
    assert {r: v.count for r, v in by_rule.items()} == {
        "json": 2,
        "required_fields": 1,
        "utf8": 1,
        "known_category": 1,
        "date_format": 1,
        "non_empty_title": 1,
    }
    assert by_rule["json"].examples[0].startswith(f"{path}:4: malformed JSON")
    assert by_rule["json"].examples[1] == f"{path}:11: expected a JSON object, got list [json]"
    assert by_rule["required_fields"].examples == [
        f"{path}:7: missing required field(s) title, abstract, categories, update_date "
        "[required_fields]"
    ]
    assert by_rule["known_category"].examples == ["line 5 id=2101.00100: 'cs.XX'"]
    assert by_rule["date_format"].examples == ["line 8 id=2101.00101: '21-01-01'"]
    assert by_rule["non_empty_title"].examples == ["line 9 id=2101.00102: '  '"]


@pytest.mark.parametrize(
    ("content", "rule"),
    [(None, "file_exists"), (b"", "non_empty_file"), (b"{x\n{y\n", "non_empty_file")],
    ids=["missing", "empty", "all-invalid"],
)
def test_validate_raw_unreadable_file(tmp_path: Path, content: bytes | None, rule: str) -> None:
    path = tmp_path / "raw.jsonl"
    if content is not None:
        path.write_bytes(content)
    report = validate_raw(path)
    assert not report.ok
    assert rule in rules(report)
    if content == b"{x\n{y\n":
        assert only(report, "json").count == 2
