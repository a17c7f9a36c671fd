"""benchmarks/robustness.py: the perturbations are exact and seeded, the quick run works end to
end on the small prepared data with real (tiny) bundles, and the section renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import robustness as rb

TEXT = " ".join(f"word{i}" for i in range(200))


# ---- truncation ----


def test_truncate_keeps_the_first_k_words() -> None:
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    assert rb.truncate_words(" ".join(words), 0.25) == "one two"
    assert rb.truncate_words(" ".join(words), 0.5) == "one two three four"
    assert rb.truncate_words(" ".join(words), 1.0) == " ".join(words)
    assert rb.truncate_words("a b c", 0.25) == "a"  # ceil: never empties a non-empty abstract
    assert rb.truncate_words("", 0.5) == ""


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_truncate_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        rb.truncate_words(TEXT, fraction)


# ---- typos ----


@pytest.mark.parametrize("rate", [0.05, 0.10, 0.5])
def test_typos_change_exactly_the_asked_fraction_of_words(rate: float) -> None:
    noisy = rb.add_typos(TEXT, rate, seed=1)
    before, after = TEXT.split(), noisy.split()
    assert len(after) == len(before)  # an edit never removes or splits a word
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert changed == round(rate * len(before))


def test_typos_are_deterministic_per_seed() -> None:
    assert rb.add_typos(TEXT, 0.1, seed=3) == rb.add_typos(TEXT, 0.1, seed=3)
    assert rb.add_typos(TEXT, 0.1, seed=3) != rb.add_typos(TEXT, 0.1, seed=4)
    assert rb.add_typos(TEXT, 0.0, seed=3) == TEXT


def test_typos_skip_words_without_letters_and_edit_short_words() -> None:
    text = "a 42 b 3.14 c ( d"
    noisy = rb.add_typos(text, 1.0, seed=0)
    before, after = text.split(), noisy.split()
    assert [w for w in after if not any(c.isalpha() for c in w)] == ["42", "3.14", "("]
    for a, b in zip(before, after, strict=True):
        assert (a != b) == any(c.isalpha() for c in a), (a, b)


def test_typos_reject_bad_rates() -> None:
    with pytest.raises(ValueError, match="rate"):
        rb.add_typos(TEXT, 1.5, seed=0)


# ---- title only + shifts ----


def test_title_only_empties_the_abstract_and_the_model_still_predicts(
    tfidf_bundle: Path,
) -> None:
    from paperops.inference.predictor import load_predictor

    title, abstract = rb.title_only("Quantum error correction codes", "A long abstract.")
    assert (title, abstract) == ("Quantum error correction codes", "")
    pred = load_predictor(tfidf_bundle).predict_papers([(title, abstract)])[0]
    assert 0.0 <= pred.confidence <= 1.0
    assert pred.label in load_predictor(tfidf_bundle).labels


def test_every_shift_yields_model_texts_and_clean_is_identity() -> None:
    from paperops.data.text import model_text

    pairs = [("A title here", TEXT)]
    for name in rb.SHIFTS:
        (text,) = rb.apply_shift(name, pairs, seed=0)
        assert text.count("\n") == 1 and text.split("\n")[0], name  # title, newline, abstract
    assert rb.apply_shift("clean", pairs) == [model_text(*pairs[0])]
    assert rb.apply_shift("title_only", pairs) == ["A title here\n"]
    half = rb.apply_shift("abstract_50", pairs)[0].split("\n")[1]
    assert half.split() == TEXT.split()[:100]


def test_submission_month_from_ids() -> None:
    assert rb.submission_month("2506.16111", "2026-01-01") == "2025-06"
    assert rb.submission_month("704.0001", "2010-01-01") == "2007-04"
    assert rb.submission_month("quant-ph/0505014", "2010-01-01") == "2005-05"
    assert rb.submission_month("hep-th/9901001", "2010-01-01") == "1999-01"
    assert rb.submission_month("custom-id", "2021-03-04") == "2021-03"


# ---- end to end (quick scale) and rendering ----


@pytest.mark.integration
def test_quick_run_end_to_end(
    _prepared_once: Path,
    tfidf_bundle: Path,
    embedding_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setenv("PAPEROPS_EMBED_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    r = rb.run(
        scale="quick",
        processed=_prepared_once,
        tfidf_dir=tfidf_bundle,
        embedding_dir=embedding_bundle,
        write=False,
    )
    assert torch.get_num_threads() == threads  # restored for the rest of the session
    json.dumps(r, allow_nan=False)  # strict JSON: no NaN even for empty slices
    assert set(r["models"]) == {"tfidf", "tfidf_sample", "embedding"}
    for m in r["models"].values():
        assert list(m["shifts"]) == list(rb.SHIFTS)
        clean = m["shifts"]["clean"]
        assert clean["accuracy_ratio"] == pytest.approx(1.0)
        assert 0.0 <= clean["ece"] <= 1.0
    t = r["time_split"]
    assert t["train_rows"]["stratified"] > 0 and t["train_rows"]["time"] > 0
    assert "## Robustness under shift" in rb.markdown(r)


def _fake_row(acc: float, clean: float) -> dict[str, Any]:
    return {
        "accuracy_delta_ci95": [acc - clean - 0.01, acc - clean + 0.01],
        "n": 100,
        "accuracy": acc,
        "macro_f1": acc - 0.2,
        "mean_confidence": 0.8,
        "ece": 0.05,
        "changed": 0.1,
        "accuracy_ratio": acc / clean,
        "accuracy_delta": acc - clean,
    }


def fake_result() -> dict[str, Any]:
    accs = dict(zip(rb.SHIFTS, [0.9, 0.88, 0.8, 0.6, 0.85, 0.81], strict=True))
    shifts = {k: _fake_row(v, 0.9) for k, v in accs.items()}
    sliced = {"n": 20, "accuracy": 0.7, "macro_f1": 0.5, "mean_confidence": 0.8, "ece": 0.1}
    return {
        "label_level": "archive",
        "scale": "quick",
        "measured": "2026-01-01",
        "device": "2 CPU cores, 1 torch thread(s)",
        "seconds": 42.0,
        "test_size": 1000,
        "sample_size": 100,
        "shift_descriptions": {k: v[0] for k, v in rb.SHIFTS.items()},
        "models": {"tfidf": {"shifts": shifts}, "embedding": {"shifts": shifts}},
        "period_slices": {
            "oldest 20%": sliced | {"months": ["1994-06", "2007-03"]},
            "newest 20%": sliced | {"months": ["2026-01", "2026-08"]},
        },
        "time_split": {
            "train_rows": {"stratified": 700, "time": 700},
            "time_test_window": ["2026-04-01", "2026-08-01"],
            "time_train_window": ["1994-01-01", "2025-12-01"],
            "stratified_on_stratified_test": {"n": 100, "accuracy": 0.9, "macro_f1": 0.6},
            "time_on_time_test": {"n": 100, "accuracy": 0.8, "macro_f1": 0.5},
            "stratified_on_shared": {"n": 10, "accuracy": 0.9, "macro_f1": 0.6},
            "time_on_shared": {"n": 10, "accuracy": 0.72, "macro_f1": 0.5},
        },
    }


def test_markdown_renders_the_tables() -> None:
    md = rb.markdown(fake_result())
    assert md.startswith("## Robustness under shift (`benchmarks/robustness.py`)")
    assert "| tfidf (whole test split) | 100 | 0.900 | 0.880 (0.98x) | 0.800 (0.89x) |" in md
    assert "| embedding (sample) | title_only | 0.600 | -0.300 [-0.310, -0.290] |" in md
    assert "| oldest 20% | 1994-06 – 2007-03 | 20 | 0.700 |" in md
    assert "(0.900 -> 0.720, 0.80x)" in md
    for desc in rb.SHIFTS.values():
        assert desc[0] in md
    # every table row has the header's column count
    for block in md.split("\n\n"):
        rows = [x for x in block.splitlines() if x.startswith("|")]
        assert len({x.count("|") for x in rows}) <= 1, block


def test_markdown_handles_empty_shared_set() -> None:
    r = fake_result()
    r["time_split"]["stratified_on_shared"] = {"n": 0, "accuracy": None, "macro_f1": None}
    r["time_split"]["time_on_shared"] = {"n": 0, "accuracy": None, "macro_f1": None}
    md = rb.markdown(r)
    assert "no shared score" in md


def test_paired_delta_ci() -> None:
    same = np.array([True, False] * 50)
    assert rb.paired_delta_ci(same, same, seed=0) == [0.0, 0.0]
    worse = same.copy()
    worse[:20] = False  # 10 of the 50 right answers lost: delta -0.1
    lo, hi = rb.paired_delta_ci(same, worse, seed=0)
    assert lo < -0.1 < hi < 0
    assert rb.paired_delta_ci(same, worse, seed=0) == [lo, hi]  # seeded
    assert rb.paired_delta_ci(same[:1], worse[:1], seed=0) is None


def test_score_on_an_empty_slice_is_strict_json() -> None:
    out = rb.score(np.zeros(0, dtype=int), np.zeros(0, dtype=int), None, 3)
    assert out == {"n": 0, "accuracy": None, "macro_f1": None}
