"""Explanations: the linear ones are exact (every contribution, summed with the intercept, is the
model's logit) and point at the text as written; occlusion is bounded and one runtime call."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paperops.data.text import model_text
from paperops.inference.explain import (
    CannotExplain,
    LinearExplainer,
    OcclusionExplainer,
    Span,
    explain_method,
    make_explainer,
    occlusion_units,
    sentence_spans,
    without,
)
from paperops.inference.predictor import ClassifierRuntime, ModelInfo, Predictor, load_predictor
from paperops.models.tfidf import TfidfClassifier, TfidfConfig
from tests.conftest import DEFAULT_COUNTS, make_records

UNSEEN = [(r["title"], r["abstract"]) for r in make_records(DEFAULT_COUNTS, seed=5)[:20]]


def _field(paper: tuple[str, str], name: str) -> str:
    return paper[0] if name == "title" else paper[1]


@pytest.fixture(scope="module")
def tfidf(tfidf_bundle: Path) -> Predictor:
    return load_predictor(tfidf_bundle)


def test_sentences_are_split_and_capped_without_losing_text() -> None:
    a = "We study graphs. Then we prove A (see Fig. 2). Smith et al. Showed it! 3 cases remain."
    assert [a[s:e] for s, e in sentence_spans(a)] == [
        "We study graphs.",
        "Then we prove A (see Fig. 2).",
        "Smith et al. Showed it!",
        "3 cases remain.",
    ]
    assert sentence_spans("   ") == []
    long = " ".join(f"Sentence number {i} is here." for i in range(40))
    units = occlusion_units(("  A title ", long), 12)
    assert len(units) == 12 and units[0] == Span("title", 2, 9)
    groups = units[1:]  # 11 groups of consecutive sentences covering the whole abstract
    assert groups[0].start == 0 and groups[-1].end == len(long)
    assert all(a.end < b.start for a, b in itertools.pairwise(groups))


def test_without_cuts_overlapping_spans_in_each_field() -> None:
    paper = ("Graph neural networks", "We train neural nets.")
    spans = [Span("title", 6, 12), Span("title", 6, 21), Span("abstract", 9, 15)]
    assert without(paper, spans) == ("Graph  ", "We train   nets.")
    assert without(paper, [Span("title", 0, 5)]) == ("  neural networks", paper[1])


def test_linear_contributions_are_exact_and_placed_in_the_text(tfidf: Predictor) -> None:
    ex = make_explainer(tfidf, max_terms=8)
    assert isinstance(ex, LinearExplainer) and explain_method(tfidf) == "linear"
    model = tfidf.runtime.model  # type: ignore[attr-defined]
    labels = [p.label for p in tfidf.predict_papers(UNSEEN)]
    logits = model.logits([model_text(*p) for p in UNSEEN])
    X = ex.vec.transform([model_text(*p) for p in UNSEEN])
    for i, (paper, label, e) in enumerate(
        zip(UNSEEN, labels, ex.explain(UNSEEN, labels), strict=True)
    ):
        j = tfidf.labels.index(label)
        w, b = ex.weights(label)
        # every feature's x_j * w_cj plus the intercept is the model's own logit
        assert b + X[i].toarray()[0] @ w == pytest.approx(logits[i, j], abs=1e-6)
        assert e.score == pytest.approx(logits[i, j], abs=1e-5)
        total = sum(t.weight for t in e.terms) + sum(p.weight for p in e.parts)
        assert total == pytest.approx(e.score, abs=1e-4)
        assert 0 < len(e.terms) <= 8 and e.reason is None
        weights = [t.weight for t in e.terms]
        assert weights == sorted(weights, reverse=True) and min(weights) > 0
        for t in e.terms:
            # the feature's tokens, found where the spans point (case-insensitive)
            assert t.spans[0] == Span(t.field, t.start, t.end)
            assert all(_field(paper, s.field)[s.start : s.end] for s in t.spans)
            first = _field(paper, t.field)[t.start : t.end]
            assert first.lower() in t.text.lower()
            assert t.text.lower() in model.pipeline.named_steps["tfidf"].vocabulary_


def test_unknown_words_give_an_empty_explanation_with_a_reason(tfidf: Predictor) -> None:
    paper = ("Zyxw qwv", "Ffff gggg hhhh. Ωμέγα ελληνικά.")
    (pred,) = tfidf.predict_papers([paper])
    (e,) = make_explainer(tfidf).explain([paper], [pred.label])
    assert e.terms == [] and "vocabulary" in (e.reason or "")
    assert e.score == pytest.approx(e.parts[0].weight)  # the intercept alone


def test_offsets_survive_case_folding_that_changes_length() -> None:
    texts = ["İstanbul graphs\nneural graphs", "Moduli stacks\ntheorem stacks"] * 4
    m = TfidfClassifier(["cs", "math"], TfidfConfig(min_df=1)).fit(texts, ["cs", "math"] * 4)
    p = Predictor(ClassifierRuntime(m), None, ModelInfo("bin", "1", "tfidf", "sklearn", "x", 2))
    paper = ("İİ GRAPHS", "Neural graphs and stacks")
    (e,) = make_explainer(p).explain([paper], ["cs"])
    graphs = next(t for t in e.terms if t.text.lower() == "graphs")
    assert [paper[0][graphs.start : graphs.end]] == ["GRAPHS"]
    # binary: the cs logit is +s and math's is -s; contributions flip sign with the label
    (em,) = make_explainer(p).explain([paper], ["math"])
    assert em.score == pytest.approx(-e.score, abs=1e-5)


def test_hybrid_embedding_block_is_one_exact_part(hybrid_bundle: Path) -> None:
    p = load_predictor(hybrid_bundle)
    ex = make_explainer(p)
    assert ex.method == "linear"
    model = p.runtime.model  # type: ignore[attr-defined]
    papers = UNSEEN[:6]
    labels = [q.label for q in p.predict_papers(papers)]
    feats = model._features([model_text(*q) for q in papers])
    n_words = len(model.vectorizer.vocabulary_)
    for i, (label, e) in enumerate(zip(labels, ex.explain(papers, labels), strict=True)):
        w, _ = ex.weights(label)
        embedding = feats[i, n_words:].toarray()[0] @ w[n_words:]
        part = {q.name: q.weight for q in e.parts}
        assert part["semantic (embedding)"] == pytest.approx(embedding, abs=1e-4)
        assert e.terms and all(t.weight > 0 for t in e.terms)


class CountingRuntime:
    """Wraps a runtime and records the size of every call."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.kind, self.labels = inner, "counting", inner.labels
        self.calls: list[int] = []

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.logits(texts)


def test_occlusion_is_one_bounded_call_over_any_runtime(tfidf: Predictor) -> None:
    rt = CountingRuntime(tfidf.runtime)
    p = Predictor(rt, tfidf.calibration, tfidf.info)
    assert explain_method(p) == "occlusion"  # not a ClassifierRuntime: any runtime works
    ex = make_explainer(p, max_sentences=4)
    assert isinstance(ex, OcclusionExplainer)
    title = UNSEEN[0][0]
    paper = (title, ". ".join(r[1].rstrip(".") for r in UNSEEN[:7]) + ".")
    (pred,) = p.predict_papers([paper])
    rt.calls.clear()
    (e,) = ex.explain([paper], [pred.label])
    assert rt.calls == [1 + 4]  # the whole text + title + 3 sentence groups, one call
    j = p.labels.index(pred.label)
    full = p.probabilities([model_text(*paper)])[0][0, j]
    assert e.score == pytest.approx(full, abs=1e-6)
    for t in e.terms:
        cut = p.probabilities([model_text(*without(paper, t.spans))])[0][0, j]
        assert t.weight == pytest.approx(full - cut, abs=1e-6) and t.weight > 0
        assert t.text == _field(paper, t.field)[t.start : t.end]


def test_a_method_the_server_does_not_allow_names_the_model(tfidf: Predictor) -> None:
    p = Predictor(CountingRuntime(tfidf.runtime), None, tfidf.info)
    with pytest.raises(
        CannotExplain, match=r"model 'tfidf' vlocal \(family tfidf.*needs the occlusion method"
    ):
        make_explainer(p, methods=["linear"])
    with pytest.raises(CannotExplain, match="none"):
        make_explainer(tfidf, methods=[])


def test_a_custom_analyzer_cannot_be_mapped_back_to_words() -> None:
    m = TfidfClassifier(["cs", "math"], TfidfConfig(min_df=1))
    m.fit(["graphs neural", "stacks moduli"] * 3, ["cs", "math"] * 3)
    m.pipeline.named_steps["tfidf"].analyzer = "char"  # type: ignore[union-attr]
    p = Predictor(ClassifierRuntime(m), None, ModelInfo("c", "1", "tfidf", "sklearn", "x", 2))
    with pytest.raises(CannotExplain, match=r"model 'c' v1.*mapped back to words"):
        make_explainer(p)
