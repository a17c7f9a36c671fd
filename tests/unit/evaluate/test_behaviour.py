"""Behavioural tests: the edits are harmless, and the checks catch models that are not invariant."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paperops.data.datamodule import EmptySplitError, TextSplit, load_splits_for_model
from paperops.data.text import model_text
from paperops.evaluate.behaviour import (
    DOMAIN_TERMS,
    add_typos,
    class_terms,
    derive_terms,
    lowercase_title,
    perturb_whitespace,
    run_behavioural,
    titlecase_title,
)
from paperops.evaluate.config import BehaviouralConfig, EvalConfig
from tests.conftest import VOCAB

LABELS = ["astro-ph", "cs", "zz-custom"]  # two curated archives and one without curated terms
WORDS = {
    "astro-ph": ["nebula", "photometry", "accretion", "quasar", "dwarf", "halo", "spectra"],
    "cs": ["parser", "kernel", "cache", "thread", "protocol", "scheduler", "latency"],
    "zz-custom": ["ferment", "yeast", "barley", "brewing", "hops", "malt", "wort"],
}


def synthetic_split(name: str, n: int, seed: int) -> TextSplit:
    """Papers whose words come only from their class's list; titles in sentence case."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    titles, abstracts = [], []
    for c in y:
        words = WORDS[LABELS[c]]
        title = " ".join(rng.choice(words, 4))
        titles.append(title[0].upper() + title[1:])
        abstracts.append(" ".join(rng.choice(words, 25)).capitalize() + ".")
    frame = pd.DataFrame(
        {
            "id": [f"2101.{seed:02d}{i:03d}" for i in range(n)],
            "title": titles,
            "abstract": abstracts,
            "label": [LABELS[c] for c in y],
        }
    )
    texts = [model_text(t, a) for t, a in zip(titles, abstracts, strict=True)]
    return TextSplit(name, frame, texts, y.astype(np.int64))


class BagOfWords:
    """Logit of class c = how many of c's words the (lower-cased) text contains."""

    family = "bow"

    def __init__(self, labels: Sequence[str], vocab: dict[str, set[str]]) -> None:
        self.labels = list(labels)
        self.vocab = vocab

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        tokens = [re.findall(r"[a-z]+", t.lower()) for t in texts]
        return np.array(
            [[sum(w in self.vocab[lab] for w in toks) for lab in self.labels] for toks in tokens],
            dtype=np.float64,
        )

    def save(self, directory: Path) -> Path:
        raise NotImplementedError


class TitleCaseModel:
    """Predicts "a" when the title (first line) has a capital letter: a formatting shortcut."""

    family = "case"

    def __init__(self) -> None:
        self.labels = ["a", "b"]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        upper = [sum(ch.isupper() for ch in t.split("\n", 1)[0]) for t in texts]
        return np.array([[u, 0.5] for u in upper], dtype=np.float64)

    def save(self, directory: Path) -> Path:
        raise NotImplementedError


def bow_model() -> BagOfWords:
    vocab = {lab: set(WORDS[lab]) | set(DOMAIN_TERMS.get(lab, [])) for lab in LABELS}
    return BagOfWords(LABELS, vocab)


CFG = BehaviouralConfig(n_examples=30, typo_rate=0.05, seed=3)


# --- the edits ----------------------------------------------------------------------------------


def test_whitespace_edit_changes_only_spacing() -> None:
    rng = np.random.default_rng(0)
    title, abstract = "Dark matter halos of dwarf galaxies", "We observe a sample of galaxies."
    t2, a2 = perturb_whitespace(title, abstract, rng)
    assert t2.split() == title.split() and a2.split() == abstract.split()
    assert "\n" in a2 and "  " in t2
    assert model_text(t2, a2) != model_text(title, abstract)


def test_casing_edits() -> None:
    rng = np.random.default_rng(0)
    assert lowercase_title("Graph Neural Networks", "Abs.", rng) == (
        "graph neural networks",
        "Abs.",
    )
    got = titlecase_title("graph neural networks for x-ray data", "abs", rng)
    assert got == ("Graph Neural Networks For X-ray Data", "abs")


def test_typos_swap_adjacent_letters_of_long_words_only() -> None:
    text = "a an the cat dogs, of 2024 models."
    out = add_typos(text, 0.0, np.random.default_rng(0), at_least=1)
    changed = [(w1, w2) for w1, w2 in zip(text.split(), out.split(), strict=True) if w1 != w2]
    assert len(changed) == 1
    before, after = changed[0]
    assert before in ("dogs,", "models.") and sorted(before) == sorted(after)
    assert sum(x != y for x, y in zip(before, after, strict=True)) == 2  # one adjacent swap

    long = "transformer attention network gradient " * 20
    a = add_typos(long, 0.3, np.random.default_rng(7))
    assert a == add_typos(long, 0.3, np.random.default_rng(7))  # seeded
    n_changed = sum(x != y for x, y in zip(long.split(), a.split(), strict=True))
    assert 10 <= n_changed <= 40  # ~30% of 80 words
    assert add_typos(long, 0.0, np.random.default_rng(7)) == long


# --- invariance ---------------------------------------------------------------------------------


def test_a_case_dependent_model_fails_the_casing_check() -> None:
    split = synthetic_split("test", 40, seed=1)
    report = run_behavioural(TitleCaseModel(), split, None, CFG, temperature=1.0)
    lower = report["invariance"]["lowercase_title"]
    assert lower["n"] == 30 and lower["pass_rate"] < 1
    assert lower["failures"] and len(lower["failures"]) <= 3
    assert set(lower["failures"][0]) == {"id", "before", "after"}
    assert (lower["failures"][0]["before"], lower["failures"][0]["after"]) == ("a", "b")


def test_a_case_insensitive_model_passes_every_invariance_check() -> None:
    split = synthetic_split("test", 40, seed=1)
    report = run_behavioural(bow_model(), split, None, CFG, temperature=1.0)
    assert report["n_examples"] == 30
    for name, check in report["invariance"].items():
        assert check["n"] > 0, name
        assert check["pass_rate"] == 1, name
        assert check["failures"] == []


# --- directional --------------------------------------------------------------------------------


def test_directional_check_passes_for_a_model_that_reads_the_terms() -> None:
    train, test = synthetic_split("train", 90, seed=2), synthetic_split("test", 40, seed=1)
    report = run_behavioural(bow_model(), test, train, EvalConfig(behavioural=CFG), 1.0)
    d = report["directional"]
    assert d["n"] == 30 and d["pass_rate"] == 1 and d["mean_delta"] > 0
    assert d["terms"]["astro-ph"] == {"terms": DOMAIN_TERMS["astro-ph"], "source": "curated"}
    custom = d["terms"]["zz-custom"]
    assert custom["source"] == "train" and set(custom["terms"]) <= set(WORDS["zz-custom"])
    assert set(d["by_target"]) == set(LABELS) and d["skipped_labels"] == []


def test_directional_check_catches_a_model_that_ignores_the_terms() -> None:
    """A model blind to the curated terms (and to the custom class) does not raise P(target)."""
    test = synthetic_split("test", 40, seed=1)
    model = BagOfWords(LABELS, {lab: set(WORDS[lab]) for lab in LABELS})
    d = run_behavioural(model, test, None, CFG, 1.0)["directional"]
    assert d["skipped_labels"] == ["zz-custom"]  # no curated terms and no training split
    assert d["n"] > 0 and d["pass_rate"] == 0 and d["mean_delta"] == pytest.approx(0)
    assert {f["target"] for f in d["failures"]} <= {"astro-ph", "cs"}


def test_derived_terms_come_from_the_class_vocabulary(prepared_dir: Path) -> None:
    splits, labels = load_splits_for_model(prepared_dir, ("train",))
    terms = derive_terms(splits["train"], labels, ["cs", "math"])
    for label in ("cs", "math"):
        vocab = {w.lower() for part in VOCAB[label] for w in part}
        assert terms[label] and set(terms[label]) <= vocab
    assert set(class_terms(labels, None)) == set(labels)  # all four archives are curated


def test_results_are_reproducible_and_capped_at_the_split_size() -> None:
    train, test = synthetic_split("train", 60, seed=2), synthetic_split("test", 12, seed=1)
    first = run_behavioural(bow_model(), test, train, CFG, 1.0)
    assert first == run_behavioural(bow_model(), test, train, CFG, 1.0)
    assert first["n_examples"] == 12


def test_empty_or_malformed_split_is_named() -> None:
    empty = synthetic_split("test", 0, seed=1)
    with pytest.raises(EmptySplitError, match="'test' split is empty"):
        run_behavioural(bow_model(), empty, None, CFG, 1.0)
    split = synthetic_split("holdout", 5, seed=1)
    split.frame = split.frame.drop(columns=["abstract"])
    with pytest.raises(ValueError, match="'holdout' split's frame lacks columns \\['abstract'\\]"):
        run_behavioural(bow_model(), split, None, CFG, 1.0)
