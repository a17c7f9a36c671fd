"""The LM corpus on the real medical question pairs (and the real processed arXiv splits, where
`paperops data prepare` has made them), with the counts PROVENANCE.md documents."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from paperops.config import load_config
from paperops.data.corpus import CorpusConfig, load_corpus, prepare_corpus, validate_corpus
from paperops.data.sources import read_mqp_csv
from paperops.data.text import clean_whitespace

from .conftest import REPO

pytestmark = pytest.mark.integration

DISTINCT_QUESTIONS = 4567  # PROVENANCE.md


def _override(name: str) -> str:
    return f"corpus={name}" if "corpus" in load_config([]) else f"+corpus={name}"


@pytest.mark.parametrize("split_by", ["question", "dr_id"])
def test_mqp_corpus_counts_and_no_leakage(mqp_path: Path, tmp_path: Path, split_by: str) -> None:
    cfg = load_config([_override("mqp"), f"corpus.path={mqp_path}", f"paths.data={tmp_path}"])
    cc = CorpusConfig.from_config(cfg.corpus, split_by=split_by)
    t0 = time.perf_counter()
    res = prepare_corpus(cc, seed=int(cfg.seed))
    seconds = time.perf_counter() - t0
    print(f"mqp split_by={split_by}: {res.counts} in {seconds:.2f} s")

    assert sum(res.counts.values()) == DISTINCT_QUESTIONS
    assert validate_corpus(res.output_dir, cc).ok
    splits = {n: pd.read_parquet(res.output_dir / f"{n}.parquet") for n in res.counts}
    where = {t: n for n, df in splits.items() for t in df["text"]}
    assert len(where) == DISTINCT_QUESTIONS  # no text in two splits

    rows = pd.DataFrame(read_mqp_csv(mqp_path))
    q1, q2 = clean_whitespace(rows["question_1"]), clean_whitespace(rows["question_2"])
    assert (q1.map(where) == q2.map(where)).all()  # a question and its rewrites share a split
    if split_by == "dr_id":
        per_doctor = pd.DataFrame({"dr": rows["dr_id"], "split": q1.map(where)})
        assert (per_doctor.groupby("dr")["split"].nunique() == 1).all()
    else:  # the seeded group split lands close to 80/10/10
        assert abs(res.counts["train"] / DISTINCT_QUESTIONS - 0.8) < 0.02
    meta = json.loads((res.output_dir / "corpus.json").read_text())
    assert list(meta["sources"].values()) == [
        "94ecd609a9ca9350e1cff2438aa55a034762f01c1a68732aaae3e4be7b03cf57"
    ]
    texts = load_corpus(res.output_dir)
    assert {k: len(v) for k, v in texts.items()} == res.counts


def test_arxiv_corpus_from_processed_splits(tmp_path: Path) -> None:
    processed = REPO / "data" / "processed"
    if not all((processed / f"{n}.parquet").is_file() for n in ("train", "val", "test")):
        pytest.skip(f"{processed} has no prepared splits (run `paperops data prepare`)")
    cfg = load_config([_override("arxiv"), f"corpus.path={processed}", f"paths.data={tmp_path}"])
    cc = CorpusConfig.from_config(cfg.corpus)
    res = prepare_corpus(cc, seed=int(cfg.seed))
    assert res.counts == {"train": 20000, "val": 2000, "test": 2000}
    texts = load_corpus(res.output_dir, splits=("val",))["val"]
    assert all(t.startswith("Title: ") and "\nAbstract: " in t for t in texts)
