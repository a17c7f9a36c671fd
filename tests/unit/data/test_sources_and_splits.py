"""Several raw files, the per-class cap, sources kept through prepare, and split=source."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from paperops.data.errors import DataError
from paperops.data.prepare import PrepareConfig, PrepareResult, prepare
from paperops.data.splits import SPLITS, cap_per_class, choose_holdout
from paperops.data.validate import validate_processed
from tests.conftest import write_jsonl

ABSTRACT = "We study the spectral gap of random regular graphs and prove a sharp bound on it."
LIMITS = {"title_min_chars": 5, "title_max_chars": 500, "abstract_min_chars": 40,
          "abstract_max_chars": 6000}  # fmt: skip


def paper(i: int, primary: str, source: str | None = None, **changes: Any) -> dict[str, Any]:
    rec = {
        "id": f"2103.{i:05d}",
        "title": f"On topic {primary}, part {i}",
        "abstract": f"{ABSTRACT} Case {i} of {primary}.",
        "categories": primary,
        "update_date": "2021-03-15",
        **changes,
    }
    if source is not None:
        rec["source"] = source
    return rec


def block(start: int, n: int, primary: str, source: str | None = None) -> list[dict[str, Any]]:
    return [paper(start + i, primary, source) for i in range(n)]


def run(tmp_path: Path, files: dict[str, list], **cfg: Any) -> PrepareResult:
    paths = [write_jsonl(tmp_path / "raw" / name, recs) for name, recs in files.items()]
    cfg.setdefault("min_count", 4)
    return prepare(PrepareConfig(raw_paths=paths, output_dir=tmp_path / "out", **cfg))


def load_all(out: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(out / f"{s}.parquet").assign(split=s) for s in SPLITS], ignore_index=True
    )


def test_two_files_are_read_deduplicated_across_files_and_keep_their_source(
    tmp_path: Path,
) -> None:
    a = block(0, 10, "cs.LG", "listing/a") + block(100, 10, "math.AG", "listing/a")
    # b repeats two papers of a: one by id, one by normalised text under another id
    b = [
        *block(200, 10, "hep-th", "listing/b"),
        paper(3, "cs.LG", "listing/b"),
        {**paper(999, "math.AG", "listing/b"),
         "title": a[12]["title"].upper(), "abstract": "  " + a[12]["abstract"]},
    ]  # fmt: skip
    result = run(tmp_path, {"a.jsonl": a, "b.jsonl.gz": b})
    df = load_all(result.output_dir)
    assert len(df) == 30 and df["id"].is_unique
    assert result.dropped == {"duplicate_id": 1, "duplicate_text": 1}
    assert dict(df.groupby("source").size()) == {"listing/a": 20, "listing/b": 10}
    meta = json.loads((result.output_dir / "labels.json").read_text())
    assert [Path(f["path"]).name for f in meta["raw_files"]] == ["a.jsonl", "b.jsonl.gz"]
    card = (result.output_dir / "data_card.md").read_text()
    assert "## Rows per source and split" in card and "| `listing/a` |" in card


def test_a_glob_reads_every_matching_file_and_a_missing_one_is_named(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "raw" / "x1.jsonl", block(0, 8, "cs.LG"))
    write_jsonl(tmp_path / "raw" / "x2.jsonl", block(50, 8, "hep-th"))
    out = tmp_path / "out"
    result = prepare(PrepareConfig(raw_paths=str(tmp_path / "raw" / "x*.jsonl"), output_dir=out,
                                   min_count=4))  # fmt: skip
    df = load_all(result.output_dir)
    assert dict(df.groupby("source").size()) == {"x1.jsonl": 8, "x2.jsonl": 8}  # file = source

    for bad in ([tmp_path / "raw" / "x1.jsonl", tmp_path / "nope.jsonl"], [str(tmp_path / "z*")]):
        with pytest.raises(DataError, match=r"data\.raw_paths") as info:
            prepare(PrepareConfig(raw_paths=bad, output_dir=tmp_path / "o2", min_count=4))
        assert info.value.rule == "file_exists" and str(bad[-1]) in str(info.value)
        assert not (tmp_path / "o2").exists()


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_jsonl(tmp_path / "raw" / "locked.jsonl", block(0, 8, "cs.LG"))
    raw.chmod(0)
    if os.access(raw, os.R_OK):  # root reads any file: make access() answer as for a user
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != raw)
    with pytest.raises(DataError, match="not readable") as info:
        prepare(PrepareConfig(raw_paths=[raw], output_dir=tmp_path / "o", min_count=4))
    assert info.value.rule == "file_readable" and str(raw) in str(info.value)
    assert not (tmp_path / "o").exists()


def test_files_that_disagree_on_a_primary_are_an_error_or_dropped(tmp_path: Path) -> None:
    a = block(0, 8, "cs.LG", "a") + block(100, 8, "math.AG", "a")
    b = [*block(200, 8, "hep-th", "b"), paper(5, "stat.ML", "b")]  # 2103.00005: cs.LG in a
    with pytest.raises(DataError, match="different primary categories") as info:
        run(tmp_path, {"a.jsonl": a, "b.jsonl": b})
    msg = str(info.value)
    assert "2103.00005" in msg and "a.jsonl line 6: cs.LG" in msg
    assert "b.jsonl line 9: stat.ML" in msg
    assert not (tmp_path / "out").exists()

    result = run(tmp_path, {"a.jsonl": a, "b.jsonl": b}, on_error="skip")
    assert result.dropped["conflicting_primary"] == 2  # both copies: no file is trusted more
    assert "2103.00005" not in set(load_all(result.output_dir)["id"])


def test_the_cap_keeps_a_seeded_sample_per_class(tmp_path: Path) -> None:
    files = {"a.jsonl": block(0, 40, "cs.LG", "a") + block(100, 6, "hep-th", "a")}
    r1 = run(tmp_path / "1", files, max_per_class=10)
    r2 = run(tmp_path / "2", files, max_per_class=10)
    df1, df2 = load_all(r1.output_dir), load_all(r2.output_dir)
    assert dict(df1["label"].value_counts()) == {"cs": 10, "hep-th": 6}
    assert r1.dropped["class_cap"] == 30
    assert sorted(df1["id"]) == sorted(df2["id"])  # seeded
    r3 = run(tmp_path / "3", files, max_per_class=10, seed=7)
    assert sorted(load_all(r3.output_dir)["id"]) != sorted(df1["id"])

    mask = cap_per_class(pd.Series(["x"] * 5 + ["y"] * 2), 3, seed=0)
    assert mask.sum() == 5 and mask[5:].all()
    with pytest.raises(ValueError, match="max_per_class"):
        PrepareConfig(raw_paths="x", output_dir=tmp_path, min_count=10, max_per_class=5)


def _sources_fixture() -> dict[str, list]:
    files: dict[str, list] = {"a.jsonl": [], "b.jsonl": []}
    n = 0
    for src, fname in (("s1", "a.jsonl"), ("s2", "a.jsonl"), ("s3", "b.jsonl"), ("s4", "b.jsonl")):
        for primary in ("cs.LG", "math.AG", "hep-th"):
            files[fname] += block(n, 12, primary, src)
            n += 100
    files["b.jsonl"] += block(5000, 6, "q-bio.GN", "s4")  # a class only a held-out source has
    return files


def test_source_split_holds_out_whole_sources(tmp_path: Path) -> None:
    result = run(tmp_path, _sources_fixture(), split="source", holdout_sources=["s2", "s4"],
                 max_per_class=20)  # fmt: skip
    df = load_all(result.output_dir)
    by_source = df.groupby("source")["split"].unique().map(set).to_dict()
    assert by_source["s2"] == by_source["s4"] == {"test"}
    assert by_source["s1"] == by_source["s3"] == {"train", "val", "calibration"}
    assert len(df[df["split"] == "test"]) == 72  # held-out rows are never capped
    assert dict(df[df["split"] != "test"]["label"].value_counts()) == {
        "cs": 20, "math": 20, "hep-th": 20}  # fmt: skip
    assert result.dropped["holdout_class_not_in_training"] == 6  # q-bio: no training source
    meta = json.loads((result.output_dir / "labels.json").read_text())
    assert meta["holdout_sources"] == ["s2", "s4"] and "q-bio" not in result.labels
    card = (result.output_dir / "data_card.md").read_text()
    assert "| `s2` (held out) |" in card and "held-out sources `s2`, `s4`" in card
    report = validate_processed(result.output_dir, LIMITS, min_rows_total=10,
                                min_train_rows_per_class=5)  # fmt: skip
    assert report.ok, report.render()


def test_source_split_seeded_draw_and_bad_holdouts(tmp_path: Path) -> None:
    assert choose_holdout(["b", "a", "c", "d"], [], 2, seed=1) == choose_holdout(
        ["d", "c", "b", "a"], [], 2, seed=1)  # fmt: skip
    r = run(tmp_path / "1", _sources_fixture(), split="source", holdout_count=1)
    held = json.loads((r.output_dir / "labels.json").read_text())["holdout_sources"]
    assert len(held) == 1 and set(load_all(r.output_dir).query("split == 'test'")["source"]) == set(
        held)  # fmt: skip
    with pytest.raises(DataError, match=r"\['nope'\] are not in the data"):
        run(tmp_path / "2", _sources_fixture(), split="source", holdout_sources=["nope"])
    with pytest.raises(DataError, match="holdout_count"):
        run(tmp_path / "3", _sources_fixture(), split="source", holdout_count=4)


def test_archive_only_sources_never_become_category_labels(tmp_path: Path) -> None:
    files = {"a.jsonl": block(0, 8, "cs.LG", "fine") + block(100, 8, "quant-ph", "oai-set")
             + block(200, 8, "quant-ph", "fine")}  # fmt: skip
    cat = run(tmp_path / "c", files, label_level="category", archive_only_sources=["oai-set"])
    df = load_all(cat.output_dir)
    assert set(df["source"]) == {"fine"} and cat.dropped["archive_only_source"] == 8
    arch = run(tmp_path / "a", files, archive_only_sources=["oai-set"])
    assert dict(load_all(arch.output_dir)["label"].value_counts()) == {"quant-ph": 16, "cs": 8}
