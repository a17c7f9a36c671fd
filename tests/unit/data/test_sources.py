"""Raw readers: arXiv JSON lines (plain/gzip) and the medical question pairs CSV."""

from __future__ import annotations

import gzip
import inspect
import json
import zlib
from collections import Counter
from pathlib import Path

import pytest

from paperops.data.errors import DataError
from paperops.data.sources import (
    ARXIV_FIELDS,
    ReadReport,
    iter_arxiv_jsonl,
    read_arxiv_frame,
    read_mqp_csv,
)
from tests.conftest import make_records, write_jsonl

GOOD = {
    "id": "2101.00001",
    "title": "Graph Neural Networks for Molecules",
    "abstract": "We propose a graph neural network that predicts molecular properties.",
    "categories": "cs.LG stat.ML",
    "update_date": "2021-01-04",
}


def good(i: int, **changes: object) -> dict:
    return {**GOOD, "id": f"2101.{i:05d}", **changes}


def read_all(path: Path, **kw: object) -> list[dict]:
    return list(iter_arxiv_jsonl(path, **kw))


def strip_line(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("line", "source")} for r in records]


# --- arXiv JSON lines: good input -----------------------------------------------------------


@pytest.mark.parametrize("name", ["arxiv.jsonl", "arxiv.jsonl.gz"])
def test_plain_and_gzip_read_the_same(tmp_path: Path, name: str) -> None:
    records = make_records({"cs.LG": 5, "hep-th": 4})
    plain = read_all(write_jsonl(tmp_path / "plain" / name, records))
    gz = read_all(write_jsonl(tmp_path / "gz" / name, records, gzip=True))
    assert plain == gz
    assert len(plain) == 9
    assert strip_line(plain) == [{k: r[k] for k in ARXIV_FIELDS} for r in records]
    assert [r["line"] for r in plain] == list(range(1, 10))


def test_gzip_detected_by_magic_bytes_not_name(tmp_path: Path) -> None:
    gz_named_jsonl = write_jsonl(tmp_path / "a.jsonl", [good(1), good(2)], gzip=True)
    assert gz_named_jsonl.read_bytes()[:2] == b"\x1f\x8b"
    plain_named_gz = write_jsonl(tmp_path / "b.jsonl.gz", [good(1), good(2)])
    assert [r["id"] for r in read_all(gz_named_jsonl)] == ["2101.00001", "2101.00002"]
    assert [r["id"] for r in read_all(plain_named_gz)] == ["2101.00001", "2101.00002"]


def test_blank_lines_ignored_but_counted_in_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", ["", good(1), "   ", "\t", good(2), ""])
    report = ReadReport(str(path))
    records = list(iter_arxiv_jsonl(path, report=report))
    assert [(r["id"], r["line"]) for r in records] == [("2101.00001", 2), ("2101.00002", 5)]
    assert (report.lines, report.records, report.blank_lines, report.n_skipped) == (6, 2, 4, 0)


def test_crlf_line_endings_and_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    rec = {**good(1), "authors": "A. Author", "doi": None, "versions": [{"version": "v1"}]}
    path.write_bytes((json.dumps(rec) + "\r\n" + json.dumps(good(2)) + "\r\n").encode())
    records = read_all(path)
    assert strip_line(records) == [GOOD, good(2)]


def test_categories_as_json_list_are_joined(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [good(1, categories=["math.AG", "math.NT"])])
    assert read_all(path)[0]["categories"] == "math.AG math.NT"


def test_unicode_and_tex_survive(tmp_path: Path) -> None:
    rec = good(
        1,
        title="Schrödinger operators with $\\alpha$-stable noise",
        abstract="We bound $\\|u\\|_{L^2}$ for the Schrödinger equation on ℝ^n.",
    )
    path = write_jsonl(tmp_path / "a.jsonl", [rec])
    got = read_all(path)[0]
    assert got["title"] == rec["title"]
    assert got["abstract"] == rec["abstract"]


def test_read_arxiv_frame_adds_primary(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [good(1), good(2, categories="  hep-th  gr-qc")])
    df = read_arxiv_frame(path)
    assert list(df.columns) == [*ARXIV_FIELDS, "source", "line", "primary"]
    assert df["primary"].tolist() == ["cs.LG", "hep-th"]
    assert df["source"].tolist() == ["a.jsonl", "a.jsonl"]  # no `source` key: the file is one
    assert df["line"].tolist() == [1, 2]


def test_reader_is_a_lazy_generator(tmp_path: Path) -> None:
    """Constant memory: records come out one at a time, so a bad last line is not even seen."""
    path = write_jsonl(tmp_path / "a.jsonl", [good(1), good(2), "{not json"])
    it = iter_arxiv_jsonl(path)
    assert inspect.isgenerator(it)
    assert next(it)["id"] == "2101.00001"
    assert next(it)["id"] == "2101.00002"
    with pytest.raises(DataError, match=r"a\.jsonl:3: malformed JSON"):
        next(it)


def test_gzip_reader_is_lazy_too(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl.gz", [good(i) for i in range(1, 2001)], gzip=True)
    report = ReadReport(str(path))
    first = next(iter_arxiv_jsonl(path, report=report))
    assert first["id"] == "2101.00001"
    assert report.records == 1
    assert report.lines < 2000


def test_invalid_on_error_value(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [good(1)])
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        read_all(path, on_error="ignore")


# --- arXiv JSON lines: bad input ------------------------------------------------------------

BAD_LINES = [
    pytest.param(
        b'{"id": "2101.00002", "title": "Cut', "json", "malformed JSON: ", id="malformed-json"
    ),
    pytest.param(
        b'{"id": "2101.00002",}',
        "json",
        "malformed JSON: Expecting property name",
        id="trailing-comma",
    ),
    pytest.param(
        json.dumps([GOOD]).encode(), "json", "expected a JSON object, got list", id="json-array"
    ),
    pytest.param(b'"just a string"', "json", "expected a JSON object, got str", id="json-string"),
    pytest.param(
        json.dumps({"id": "2101.00002", "title": "T"}).encode(),
        "required_fields",
        "missing required field(s) abstract, categories, update_date",
        id="missing-fields",
    ),
    pytest.param(
        json.dumps(good(2, abstract=None)).encode(),
        "required_fields",
        "missing required field(s) abstract",
        id="null-field",
    ),
    pytest.param(
        json.dumps(good(2, title=42)).encode(),
        "field_type",
        "field 'title' must be a string, got int",
        id="title-int",
    ),
    pytest.param(
        json.dumps(good(2, id=2101.00002)).encode(),
        "field_type",
        "field 'id' must be a string, got float",
        id="id-float",
    ),
    pytest.param(
        json.dumps(good(2, categories=["cs.LG", 3])).encode(),
        "field_type",
        "field 'categories' must be a string, got list",
        id="categories-mixed-list",
    ),
    pytest.param(
        json.dumps(good(2)).encode().replace(b"Graph", b"Gr\xe9ph"),
        "utf8",
        "invalid UTF-8 byte b'\\xe9' at byte offset 33",
        id="latin1-byte",
    ),
    pytest.param(
        json.dumps(good(2, title="bad \ud800 escape")).encode(),
        "utf8",
        "field 'title' contains an unpaired surrogate",
        id="lone-surrogate-escape",
    ),
]


@pytest.mark.parametrize(("line", "rule", "message"), BAD_LINES)
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_bad_line_raises_with_file_line_and_rule(
    tmp_path: Path, line: bytes, rule: str, message: str, compress: bool
) -> None:
    path = write_jsonl(tmp_path / "arxiv.jsonl", [good(1), "", line, good(3)], gzip=compress)
    with pytest.raises(DataError) as info:
        read_all(path)
    err = info.value
    assert (err.rule, err.line, err.path) == (rule, 3, str(path))
    assert str(err).startswith(f"{path}:3: ")
    assert message in str(err)
    assert str(err).endswith(f"[{rule}]")


@pytest.mark.parametrize(("line", "rule", "message"), BAD_LINES)
def test_bad_line_skipped_and_counted(tmp_path: Path, line: bytes, rule: str, message: str) -> None:
    path = write_jsonl(tmp_path / "arxiv.jsonl", [good(1), "", line, good(3)])
    report = ReadReport(str(path))
    records = read_all(path, on_error="skip", report=report)
    assert [r["id"] for r in records] == ["2101.00001", "2101.00003"]
    assert report.skipped == Counter({rule: 1})
    assert (report.lines, report.records, report.blank_lines) == (4, 2, 1)
    [example] = report.examples[rule]
    assert example.startswith(f"{path}:3: ") and message in example


def test_skip_counts_several_rules(tmp_path: Path) -> None:
    lines = [
        good(1),
        "{",
        good(2),
        "[1, 2]",
        json.dumps({"id": "2101.00009"}),
        good(3),
        json.dumps(good(4, update_date=20210101)),
        b"\xff\xfe{}",
        "",
        good(5),
        "nope",
    ]
    path = write_jsonl(tmp_path / "arxiv.jsonl", lines)
    report = ReadReport(str(path))
    records = read_all(path, on_error="skip", report=report)
    assert [r["line"] for r in records] == [1, 3, 6, 10]
    assert report.skipped == Counter({"json": 3, "required_fields": 1, "field_type": 1, "utf8": 1})
    assert report.n_skipped == 6
    assert [e.split(": ")[0] for e in report.examples["json"]] == [
        f"{path}:2",
        f"{path}:4",
        f"{path}:11",
    ]
    assert report.examples["utf8"] == [
        f"{path}:8: invalid UTF-8 byte b'\\xff' at byte offset 0 [utf8]"
    ]


def test_skip_keeps_only_max_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [good(1)] + ["{bad"] * 7)
    report = ReadReport(str(path), max_examples=5)
    assert len(read_all(path, on_error="skip", report=report)) == 1
    assert report.skipped["json"] == 7
    assert [e.split(":")[1] for e in report.examples["json"]] == ["2", "3", "4", "5", "6"]


def _truncated_gzip(tmp_path: Path, n: int = 400, cut: int = 200) -> tuple[Path, int]:
    """A gzip file with its last `cut` bytes missing, and how many whole lines it still holds."""
    path = write_jsonl(tmp_path / "arxiv.jsonl.gz", [good(i) for i in range(1, n + 1)], gzip=True)
    data = path.read_bytes()[:-cut]
    path.write_bytes(data)
    readable = zlib.decompressobj(wbits=31).decompress(data)
    whole = readable.count(b"\n")
    assert 0 < whole < n
    return path, whole


def test_truncated_gzip_raises_at_the_line_after_the_last_whole_one(tmp_path: Path) -> None:
    path, whole = _truncated_gzip(tmp_path)
    seen = []
    with pytest.raises(DataError) as info:
        for rec in iter_arxiv_jsonl(path):
            seen.append(rec["line"])
    assert seen == list(range(1, whole + 1))
    err = info.value
    assert (err.rule, err.line) == ("gzip_integrity", whole + 1)
    assert str(err).startswith(f"{path}:{whole + 1}: gzip stream is truncated or corrupt")
    assert "download or copy it again" in str(err)


def test_truncated_gzip_skip_keeps_what_was_read(tmp_path: Path) -> None:
    path, whole = _truncated_gzip(tmp_path)
    report = ReadReport(str(path))
    records = read_all(path, on_error="skip", report=report)
    assert len(records) == whole
    assert records[-1]["id"] == f"2101.{whole:05d}"
    assert report.truncated is True
    assert report.skipped == Counter({"gzip_integrity": 1})
    assert report.examples["gzip_integrity"][0].startswith(f"{path}:{whole + 1}: ")


def test_gzip_crc_mismatch_is_reported_after_the_last_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl.gz", [good(i) for i in range(1, 50)], gzip=True)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(DataError) as info:
        for rec in iter_arxiv_jsonl(path):
            seen.append(rec)
    assert len(seen) == 49
    assert (info.value.rule, info.value.line) == ("gzip_integrity", 50)
    assert "CRC check failed" in str(info.value)


def test_gzip_with_garbage_after_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(gzip.compress(b"")[:10] + b"\xff" * 64)  # a gzip header, then no deflate data
    with pytest.raises(DataError) as info:
        read_all(path)
    assert info.value.rule == "gzip_integrity"
    assert str(info.value).startswith(f"{path}:1: gzip stream is truncated or corrupt")


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n   \n\t\n", gzip.compress(b"")],
    ids=["empty", "only-blank-lines", "empty-gzip"],
)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_empty_file(tmp_path: Path, content: bytes, on_error: str) -> None:
    path = tmp_path / "arxiv.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_all(path, on_error=on_error)
    assert info.value.rule == "non_empty_file"
    assert str(info.value) == f"{path}: no usable records: the file is empty [non_empty_file]"


def test_all_lines_invalid_in_skip_mode(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "arxiv.jsonl", ["{bad", "[1]", "", "{}"])
    report = ReadReport(str(path))
    with pytest.raises(DataError) as info:
        read_all(path, on_error="skip", report=report)
    assert str(info.value) == (
        f"{path}: no usable records: all 3 non-blank lines were invalid [non_empty_file]"
    )
    assert report.skipped == Counter({"json": 2, "required_fields": 1})


def test_only_blank_lines_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "arxiv.jsonl"
    path.write_bytes(b"\n \n\n")
    report = ReadReport(str(path))
    with pytest.raises(DataError, match="the file is empty"):
        read_all(path, report=report)
    assert (report.lines, report.blank_lines, report.records) == (3, 3, 0)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "arxiv.jsonl"
    with pytest.raises(DataError) as info:
        read_all(path, on_error="skip")
    assert info.value.rule == "file_exists"
    assert str(info.value) == f"{path}: file not found [file_exists]"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file not found \[file_exists\]"):
        read_all(tmp_path)


# --- Medical question pairs CSV -------------------------------------------------------------

MQP_GOOD = (
    '1,"After how many hour from drinking an antibiotic can I drink alcohol?",'
    '"I have a party tonight and I took my last dose of Azithromycin this morning. '
    'Can I have a few drinks?",1\n'
    "1,After how many hour from drinking an antibiotic can I drink alcohol?,"
    "I vomited this morning and I am not sure if it is the side effect of my antibiotic,0\n"
)


def write_csv(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_mqp_good_rows(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "mqp.csv", MQP_GOOD + '2," What is, exactly, a fever? ",Is 38C a fever?,0\n'
    )
    rows = read_mqp_csv(path)
    assert [(r["dr_id"], r["label"], r["line"]) for r in rows] == [(1, 1, 1), (1, 0, 2), (2, 0, 3)]
    assert all(type(r["dr_id"]) is int and type(r["label"]) is int for r in rows)
    assert rows[0]["question_2"].startswith("I have a party tonight")
    assert rows[2]["question_1"] == "What is, exactly, a fever?"  # quoted comma kept, stripped


def test_mqp_multiline_quoted_field_reports_last_physical_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "mqp.csv", '3,"first\nsecond",q2,1\n4,a,b,x\n')
    with pytest.raises(DataError) as info:
        read_mqp_csv(path)
    assert (info.value.line, info.value.rule) == (3, "label_binary")


def test_mqp_header_row_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(tmp_path / "mqp.csv", "dr_id,question_1,question_2,label\n" + MQP_GOOD)
    rows = read_mqp_csv(path)
    assert [r["line"] for r in rows] == [2, 3]
    assert f"{path}:1: skipping a header row" in caplog.text


def test_mqp_header_later_in_file_is_an_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "mqp.csv", MQP_GOOD + "dr_id,question_1,question_2,label\n")
    with pytest.raises(DataError, match=r"mqp\.csv:3: dr_id must be a non-negative integer"):
        read_mqp_csv(path)


MQP_BAD = [
    pytest.param(
        b"5,only two\n",
        "column_count",
        "expected 4 columns (dr_id, question_1, question_2, label), got 2",
        id="too-few-columns",
    ),
    pytest.param(b"5,a,b,1,extra\n", "column_count", "got 5", id="too-many-columns"),
    pytest.param(
        b"five,a,b,1\n",
        "dr_id_int",
        "dr_id must be a non-negative integer, got 'five'",
        id="dr-id-word",
    ),
    pytest.param(b"-5,a,b,1\n", "dr_id_int", "got '-5'", id="dr-id-negative"),
    pytest.param("²,a,b,1\n".encode(), "dr_id_int", "got '²'", id="dr-id-superscript-digit"),
    pytest.param(b"5,a,b,2\n", "label_binary", "label must be 0 or 1, got '2'", id="label-2"),
    pytest.param(b"5,a,b,yes\n", "label_binary", "got 'yes'", id="label-word"),
    pytest.param(b'5,"  ",b,1\n', "non_empty_text", "question_1 is empty", id="empty-q1"),
    pytest.param(b"5,a,,0\n", "non_empty_text", "question_2 is empty", id="empty-q2"),
    pytest.param(
        b"5,a,caf\xe9,0\n", "utf8", "invalid UTF-8 in column 'question_2'", id="latin1-byte"
    ),
]


@pytest.mark.parametrize(("row", "rule", "message"), MQP_BAD)
def test_mqp_bad_row_raises(tmp_path: Path, row: bytes, rule: str, message: str) -> None:
    path = write_csv(tmp_path / "mqp.csv", MQP_GOOD.encode() + row)
    with pytest.raises(DataError) as info:
        read_mqp_csv(path)
    assert (info.value.rule, info.value.line) == (rule, 3)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)
    assert str(info.value).endswith(f"[{rule}]")


@pytest.mark.parametrize(("row", "rule", "message"), MQP_BAD)
def test_mqp_bad_row_skipped(tmp_path: Path, row: bytes, rule: str, message: str) -> None:
    path = write_csv(tmp_path / "mqp.csv", MQP_GOOD.encode() + row + b"\n7,c,d,0\n")
    report = ReadReport(str(path))
    rows = read_mqp_csv(path, on_error="skip", report=report)
    assert [(r["dr_id"], r["line"]) for r in rows] == [(1, 1), (1, 2), (7, 5)]
    assert report.skipped == Counter({rule: 1})
    assert (report.records, report.blank_lines, report.lines) == (3, 1, 5)
    assert message in report.examples[rule][0]


def test_mqp_skip_counts_per_rule(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "mqp.csv", b"x,a,b,1\n1,a,b,1\n2,a,b\n3,a,b,7\n4,a,b,9\n")
    report = ReadReport(str(path))
    rows = read_mqp_csv(path, on_error="skip", report=report)
    assert [r["line"] for r in rows] == [2]
    assert report.skipped == Counter({"label_binary": 2, "dr_id_int": 1, "column_count": 1})


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (b"", "non_empty_file"),
        (b"\n\n", "non_empty_file"),
        (b"dr_id,question_1,question_2,label\n", "non_empty_file"),
    ],
    ids=["empty", "blank-lines", "header-only"],
)
def test_mqp_no_rows(tmp_path: Path, content: bytes, rule: str) -> None:
    path = write_csv(tmp_path / "mqp.csv", content)
    with pytest.raises(DataError) as info:
        read_mqp_csv(path, on_error="skip")
    assert info.value.rule == rule
    assert str(info.value).startswith(f"{path}: no usable rows")


def test_mqp_all_rows_invalid_in_skip_mode(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "mqp.csv", b"a,b\nc,d\n")
    report = ReadReport(str(path))
    with pytest.raises(DataError, match=r"no usable rows.*\[non_empty_file\]"):
        read_mqp_csv(path, on_error="skip", report=report)
    assert report.skipped == Counter({"column_count": 2})


def test_mqp_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "mqp.csv"
    with pytest.raises(DataError) as info:
        read_mqp_csv(path)
    assert str(info.value) == f"{path}: file not found [file_exists]"


def test_mqp_invalid_on_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "mqp.csv", MQP_GOOD)
    with pytest.raises(ValueError, match="on_error"):
        read_mqp_csv(path, on_error="warn")


def test_mqp_csv_structural_error_names_file_and_line(tmp_path):
    import csv

    from paperops.data.errors import DataError
    from paperops.data.sources import read_mqp_csv

    path = tmp_path / "mqp.csv"
    big = "x" * (csv.field_size_limit() + 10)
    path.write_text(f"1,a question?,another question?,1\n2,{big},q?,0\n")
    with pytest.raises(DataError) as exc:
        read_mqp_csv(path)
    assert exc.value.rule == "csv"
    assert f"{path}:2" in str(exc.value)
