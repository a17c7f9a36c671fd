"""The LM corpus: mqp/arxiv documents, leak-free splits, the pandera rules and the CLI stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from paperops.config import load_config
from paperops.data.corpus import CorpusConfig, assign_groups, load_corpus, prepare_corpus
from paperops.data.corpus_rules import CorpusValidationError, validate_frames
from paperops.data.errors import DataError

LIMITS = {"min_chars": 10, "max_chars": 200}
MIN_ROWS = {"train": 1, "val": 1, "test": 1}


def mqp_csv(path: Path, groups: int = 40, doctors: int = 5, extra: str = "") -> Path:
    """A header-less mqp-like CSV: per group one question_1 with a similar and a different
    question_2; every 7th group's question_2 reuses the one of the same doctor's previous group
    (a chain link)."""
    lines = []
    for g in range(groups):
        dr = g % doctors + 1
        q1 = f"Patient question {g}: is symptom {g} serious?"
        sim = f"Is symptom {g} something to worry about, doctor {g}?"
        diff = f"What dose of medicine {g} should I take?"
        if g % 7 == 6:  # links group g to g - doctors
            diff = f"What dose of medicine {g - doctors} should I take?"
        lines += [f'{dr},"{q1}","{sim}",1', f'{dr},"{q1}","{diff}",0']
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def mqp_config(tmp_path: Path, csv: Path, **kw: Any) -> CorpusConfig:
    return CorpusConfig(
        name="mqp",
        source="mqp",
        path=csv,
        output_dir=tmp_path / "corpus" / "mqp",
        limits=kw.pop("limits", LIMITS),
        min_rows=kw.pop("min_rows", MIN_ROWS),
        **kw,
    )


def read_splits(out: Path) -> dict[str, pd.DataFrame]:
    return {n: pd.read_parquet(out / f"{n}.parquet") for n in ("train", "val", "test")}


def split_of(splits: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {t: n for n, df in splits.items() for t in df["text"]}


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    return mqp_csv(tmp_path / "mqp.csv")


# --------------------------------------------------------------------------- mqp source


def test_headerless_csv_gives_one_document_per_distinct_question(tmp_path: Path, csv: Path) -> None:
    res = prepare_corpus(mqp_config(tmp_path, csv), seed=1)
    splits = read_splits(res.output_dir)
    texts = [t for df in splits.values() for t in df["text"]]
    rows = pd.read_csv(csv, header=None, names=["dr_id", "q1", "q2", "label"])
    assert sorted(texts) == sorted(set(rows["q1"]) | set(rows["q2"]))
    assert sum(res.counts.values()) == len(texts)
    assert res.dropped["repeated_question"] == 2 * len(rows) - len(texts)
    for df in splits.values():
        assert {"doc_id", "text", "group", "dr_id", "source_row"} <= set(df.columns)
        assert df["source_row"].between(1, len(rows)).all()
    meta = json.loads((res.output_dir / "corpus.json").read_text())
    assert meta["counts"] == res.counts
    assert list(meta["sources"]) == [str(csv)] and len(meta["sources"][str(csv)]) == 64
    assert meta["stats"]["train"]["chars"]["min"] >= LIMITS["min_chars"]


@pytest.mark.parametrize(
    ("extra", "rule", "line"),
    [
        ("3,only three,columns\n", "column_count", 81),
        ('x,"a question here?","another one here?",1\n', "dr_id_int", 81),
        ('3,"a question here?","another one here?",2\n', "label_binary", 81),
    ],
)
def test_malformed_csv_names_file_line_and_rule(
    tmp_path: Path, extra: str, rule: str, line: int
) -> None:
    bad = mqp_csv(tmp_path / "bad.csv", extra=extra)
    cfg = mqp_config(tmp_path, bad)
    with pytest.raises(DataError) as exc:
        prepare_corpus(cfg, seed=0)
    assert exc.value.rule == rule and exc.value.line == line
    assert f"bad.csv:{line}" in str(exc.value)
    assert not cfg.output_dir.exists()


def test_missing_csv_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        prepare_corpus(mqp_config(tmp_path, tmp_path / "nope.csv"), seed=0)


@pytest.mark.parametrize("split_by", ["question", "dr_id"])
def test_no_question_or_paraphrase_in_two_splits(tmp_path: Path, csv: Path, split_by: str) -> None:
    res = prepare_corpus(mqp_config(tmp_path, csv, split_by=split_by), seed=3)
    splits = read_splits(res.output_dir)
    where = split_of(splits)
    assert len(where) == sum(len(df) for df in splits.values())  # no text in two splits
    assert all(len(df) > 0 for df in splits.values())
    rows = pd.read_csv(csv, header=None, names=["dr_id", "q1", "q2", "label"])
    for r in rows.itertuples():
        assert where[r.q1] == where[r.q2], r  # a pair is never split
    # the chained groups (g-1 and g share a question) stay together
    assert (
        where["Patient question 5: is symptom 5 serious?"]
        == where["Patient question 6: is symptom 6 serious?"]
    )
    if split_by == "dr_id":
        for dr, grp in rows.groupby("dr_id"):
            assert len({where[q] for q in pd.concat([grp["q1"], grp["q2"]])}) == 1, dr


def test_split_is_deterministic_for_a_seed(tmp_path: Path, csv: Path) -> None:
    a = prepare_corpus(mqp_config(tmp_path / "a", csv), seed=7)
    b = prepare_corpus(mqp_config(tmp_path / "b", csv), seed=7)
    c = prepare_corpus(mqp_config(tmp_path / "c", csv), seed=8)
    sa, sb, sc = (split_of(read_splits(r.output_dir)) for r in (a, b, c))
    assert sa == sb
    assert sa != sc


def test_assign_groups_fills_every_split_and_respects_fractions() -> None:
    sizes = {g: 3 for g in range(100)}
    out = assign_groups(sizes, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    counts = pd.Series(out).value_counts()
    assert counts["test"] == 10 and counts["val"] == 10 and counts["train"] == 80
    few = assign_groups({0: 50, 1: 1, 2: 1}, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert sorted(few.values()) == ["test", "train", "val"]
    with pytest.raises(DataError, match="at least 3"):
        assign_groups({0: 1, 1: 1}, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)


def test_length_violations_are_dropped_and_counted(tmp_path: Path) -> None:
    extra = '2,"Short?","Is symptom 99 something to worry about, doctor 99?",1\n'
    extra += f'2,"{"very long question " * 20}?","Is this fine, doctor 100?",0\n'
    csv = mqp_csv(tmp_path / "mqp.csv", extra=extra)
    res = prepare_corpus(mqp_config(tmp_path, csv), seed=0)
    assert res.dropped["text_too_short"] == 1
    assert res.dropped["text_too_long"] == 1
    lengths = pd.concat(df["text"] for df in read_splits(res.output_dir).values()).str.len()
    assert lengths.between(LIMITS["min_chars"], LIMITS["max_chars"]).all()


def test_failed_validation_raises_and_writes_nothing(tmp_path: Path, csv: Path) -> None:
    cfg = mqp_config(tmp_path, csv, min_rows={"train": 1, "val": 1, "test": 10_000})
    with pytest.raises(CorpusValidationError) as exc:
        prepare_corpus(cfg, seed=0)
    assert exc.value.rule == "min_rows"
    assert "[min_rows] test" in str(exc.value)
    assert not exc.value.report.ok
    assert not cfg.output_dir.exists()


def test_max_rows_caps_a_split_with_the_seed(tmp_path: Path, csv: Path) -> None:
    res = prepare_corpus(mqp_config(tmp_path, csv, max_rows={"train": 5}), seed=0)
    assert res.counts["train"] == 5
    assert res.dropped["max_rows_train"] > 0


# --------------------------------------------------------------------------- rules


def good() -> dict[str, pd.DataFrame]:
    return {
        "train": pd.DataFrame({"text": ["first training text", "second training text"]}),
        "val": pd.DataFrame({"text": ["a validation text"]}),
        "test": pd.DataFrame({"text": ["a test text here"]}),
    }


def rules_of(splits: dict[str, pd.DataFrame], min_rows: dict[str, int] = MIN_ROWS) -> set[str]:
    report = validate_frames(splits, LIMITS, min_rows, target="t")
    return {v.rule for v in report.violations}


def test_good_frames_pass() -> None:
    assert rules_of(good()) == set()


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda s: s["train"].rename(columns={"text": "body"}), "text_column"),
        (lambda s: pd.DataFrame({"text": [1, 2]}), "text_column"),
        (lambda s: pd.DataFrame({"text": ["fine text one", "   \t  "]}), "non_empty_text"),
        (lambda s: pd.DataFrame({"text": ["fine text one", "tiny"]}), "text_length"),
        (lambda s: pd.DataFrame({"text": ["fine text one", "x" * 201]}), "text_length"),
        (lambda s: pd.DataFrame({"text": ["fine text one", "Fine text, one!"]}), "unique_text"),
        (
            lambda s: pd.DataFrame({"text": ["fine text one", "a test text here"]}),
            "no_cross_split_text",
        ),
    ],
)
def test_each_rule_fires_with_its_name(mutate: Any, rule: str) -> None:
    splits = good()
    splits["train"] = mutate(splits)
    assert rule in rules_of(splits)


def test_min_rows_and_missing_split_rules() -> None:
    assert "min_rows" in rules_of(good(), {"train": 3, "val": 1, "test": 1})
    splits = good()
    del splits["val"]
    assert "split_present" in rules_of(splits)


def test_violation_names_split_and_row() -> None:
    splits = good()
    splits["val"] = pd.DataFrame(
        {"text": ["a validation text", "tiny"], "doc_id": ["d1", "d2"], "source_row": [4, 9]}
    )
    report = validate_frames(splits, LIMITS, MIN_ROWS, target="t")
    (v,) = report.violations
    assert (v.rule, v.where, v.count) == ("text_length", "val.text", 1)
    assert v.examples[0].startswith("line 9 id=d2")


# --------------------------------------------------------------------------- arxiv + loading


def processed_dir(tmp_path: Path) -> Path:
    out = tmp_path / "processed"
    out.mkdir()
    for k, name in enumerate(("train", "val", "calibration", "test")):
        n = 30 if name == "train" else 6
        pd.DataFrame(
            {
                "id": [f"2101.{k}{i:04d}" for i in range(n)],
                "title": [f"Paper {name} {i} on graphs" for i in range(n)],
                "abstract": [
                    f"We study graph {i} of split {name} with some care." for i in range(n)
                ],
                "label": ["cs"] * n,
                "line": list(range(1 + 100 * k, 1 + 100 * k + n)),
            }
        ).to_parquet(out / f"{name}.parquet", index=False)
    return out


def test_arxiv_corpus_maps_splits_and_formats_text(tmp_path: Path) -> None:
    cfg = CorpusConfig(
        name="arxiv",
        source="arxiv",
        path=processed_dir(tmp_path),
        output_dir=tmp_path / "corpus" / "arxiv",
        limits={"min_chars": 20, "max_chars": 500},
        min_rows=MIN_ROWS,
        max_rows={"train": 10, "val": None, "test": None},
    )
    res = prepare_corpus(cfg, seed=0)
    assert res.counts == {"train": 10, "val": 6, "test": 6}
    splits = read_splits(res.output_dir)
    row = splits["val"].iloc[0]
    assert (
        row["text"]
        == "Title: Paper val 0 on graphs\nAbstract: We study graph 0 of split val with some care."
    )
    assert row["doc_id"] == "2101.10000" and row["source_row"] == 101
    assert not any("calibration" in t for df in splits.values() for t in df["text"])


def test_load_corpus_round_trip(tmp_path: Path, csv: Path) -> None:
    res = prepare_corpus(mqp_config(tmp_path, csv), seed=0)
    texts = load_corpus(res.output_dir)
    assert {k: len(v) for k, v in texts.items()} == res.counts
    assert texts["train"] == read_splits(res.output_dir)["train"]["text"].tolist()
    capped = load_corpus(res.output_dir, splits=("train",), max_rows={"train": 3}, seed=1)
    assert list(capped) == ["train"] and len(capped["train"]) == 3
    assert set(capped["train"]) <= set(texts["train"])
    assert capped == load_corpus(res.output_dir, splits=("train",), max_rows={"train": 3}, seed=1)


def test_load_corpus_missing_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="paperops data prepare-corpus"):
        load_corpus(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown corpus split"):
        load_corpus(tmp_path, splits=("calibration",))


# --------------------------------------------------------------------------- config + CLI


def corpus_override(name: str) -> str:
    """`corpus=x` once configs/config.yaml has a corpus default, `+corpus=x` before."""
    return f"corpus={name}" if "corpus" in load_config([]) else f"+corpus={name}"


@pytest.mark.parametrize("name", ["mqp", "arxiv"])
def test_shipped_configs_build(name: str) -> None:
    cfg = load_config([corpus_override(name)])
    cc = CorpusConfig.from_config(cfg.corpus)
    assert cc.source == name and cc.output_dir == Path(cfg.paths.data) / "corpus" / name
    if name == "arxiv":
        assert cc.max_rows == {"train": 20000, "val": 2000, "test": 2000}


def test_config_errors_name_the_key(tmp_path: Path, csv: Path) -> None:
    cfg = load_config([corpus_override("mqp")])
    with pytest.raises(ValueError, match="unknown corpus keys \\['typo'\\]"):
        CorpusConfig.from_config({**cfg.corpus, "typo": 1})
    with pytest.raises(ValueError, match=r"corpus\.split_by"):
        mqp_config(tmp_path, csv, split_by="label")
    with pytest.raises(ValueError, match=r"corpus\.fractions"):
        mqp_config(tmp_path, csv, fractions={"train": 0.5, "val": 0.1, "test": 0.1})


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    """The real `paperops` app once cli.py registers the corpus commands; before that, an app
    with only `data` and the corpus commands (the global app is left alone)."""
    from paperops.cli import app, data_app
    from paperops.cli.corpus import register

    if any(c.name == "prepare-corpus" for c in data_app.registered_commands):
        return app
    own, data = typer.Typer(), typer.Typer()
    own.add_typer(data, name="data")
    register(data)
    return own


def test_cli_prepares_and_validates(cli: typer.Typer, tmp_path: Path, csv: Path) -> None:
    args = [
        corpus_override("mqp"),
        f"corpus.path={csv}",
        f"paths.data={tmp_path / 'data'}",
        f"paths.reports={tmp_path / 'reports'}",
        "corpus.min_rows={train: 1, val: 1, test: 1}",
    ]
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "prepare-corpus", *args], prog_name="paperops")
    assert result.exit_code == 0, result.output
    assert "prepared corpus mqp" in result.output
    out = tmp_path / "data" / "corpus" / "mqp"
    assert {p.name for p in out.iterdir()} == {
        "train.parquet",
        "val.parquet",
        "test.parquet",
        "corpus.json",
    }
    report_path = tmp_path / "reports" / "corpus" / "mqp" / "validation.json"
    assert json.loads(report_path.read_text())["ok"] is True

    result = runner.invoke(cli, ["data", "validate-corpus", *args], prog_name="paperops")
    assert result.exit_code == 0 and "pass every rule" in result.output

    # a failing rule: exit 1, the report says why, the previous corpus is kept as it was
    fail = [*args[:-1], "corpus.min_rows={train: 1, val: 1, test: 100000}"]
    result = runner.invoke(cli, ["data", "prepare-corpus", *fail], prog_name="paperops")
    assert result.exit_code == 1
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and report["violations"][0]["rule"] == "min_rows"
    assert (out / "corpus.json").is_file()

    result = runner.invoke(cli, ["data", "validate-corpus", *fail], prog_name="paperops")
    assert result.exit_code == 1


def test_cli_bad_csv_is_a_clear_error(cli: typer.Typer, tmp_path: Path) -> None:
    bad = mqp_csv(tmp_path / "bad.csv", extra="1,two,columns\n")
    result = CliRunner().invoke(
        cli,
        [
            "data",
            "prepare-corpus",
            corpus_override("mqp"),
            f"corpus.path={bad}",
            f"paths.data={tmp_path}",
            f"paths.reports={tmp_path}",
        ],
        prog_name="paperops",
    )
    assert result.exit_code == 2
    assert "bad.csv:81" in result.output and "column_count" in result.output
