"""Why a paper got its label: the terms or sentences of its title and abstract that pushed the
predicted label most, for the API (`explain=true`), `paperops predict --explain` and the web page.

Two methods, chosen by what the served model is (`explain_method`), one interface (`Explainer`):
- `linear` (tfidf, hybrid: `explain_linear`): the exact contributions x_j * w_cj of the paper's
  TF-IDF features to the label's decision score (the logit before temperature scaling), mapped
  back to the words and word pairs as written in the title and abstract. The rest of the score
  (intercept, the hybrid's embedding block, the terms not listed) is reported in `parts`, so
  terms + parts add up to `score`.
- `occlusion` (every other runtime: embedding head, fine-tuned encoder, ONNX fp32/int8, torch):
  drop the title or one abstract sentence at a time and measure how much the label's
  calibrated probability falls. At most `max_sentences` units (longer abstracts are merged into
  that many groups of consecutive sentences), all variants scored in ONE runtime call: the cost
  is bounded at max_sentences + 1 texts per paper, and it works over any `Runtime`.

Measured (benchmarks/explain.py, docs/benchmarks.md): deleting the top-5 linear terms lowers the
label's probability far more than deleting 5 random terms of the same paper; the tests check the
same on tiny models of every family, and that a doctored random explainer fails that check.

Imports: inference (predictor) and below (models for the linear weights, data for model_text).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Protocol

from paperops.data.text import model_text
from paperops.inference.explain_linear import LinearExplainer
from paperops.inference.explanation import (
    FIELDS,
    CannotExplain,
    Explanation,
    Paper,
    Span,
    Term,
    describe,
    without,
)
from paperops.inference.predictor import ClassifierRuntime, Predictor
from paperops.models.base import SKLEARN_FAMILIES

METHODS = ("linear", "occlusion")
__all__ = [
    "FIELDS",
    "METHODS",
    "CannotExplain",
    "Explainer",
    "Explanation",
    "LinearExplainer",
    "OcclusionExplainer",
    "Paper",
    "Span",
    "Term",
    "describe",
    "explain_method",
    "make_explainer",
    "occlusion_units",
    "sentence_spans",
    "without",
]


class Explainer(Protocol):
    """Explains the given labels of papers; `candidates` lists every unit it could name (what a
    random baseline deletes from, in the faithfulness check)."""

    method: str

    def explain(self, papers: Sequence[Paper], labels: Sequence[str]) -> list[Explanation]: ...

    def candidates(self, paper: Paper) -> list[list[Span]]: ...


def explain_method(predictor: Predictor) -> str:
    """linear for a scikit-learn tfidf/hybrid model in this process, occlusion otherwise."""
    rt = predictor.runtime
    if isinstance(rt, ClassifierRuntime) and rt.model.family in SKLEARN_FAMILIES:
        return "linear"
    return "occlusion"


def make_explainer(
    predictor: Predictor,
    *,
    methods: Sequence[str] = METHODS,
    max_terms: int = 10,
    max_sentences: int = 12,
) -> Explainer:
    """The explainer for `predictor`; CannotExplain when its method is not in `methods`."""
    method = explain_method(predictor)
    if method not in methods:
        allowed = ", ".join(methods) or "none"
        raise CannotExplain(
            f"{describe(predictor.info)} cannot explain on this server: it needs the {method} "
            f"method and only [{allowed}] is enabled (serve.explain.methods)"
        )
    if method == "linear":
        return LinearExplainer(predictor, max_terms=max_terms)
    return OcclusionExplainer(predictor, max_terms=max_terms, max_sentences=max_sentences)


# --- occlusion ---------------------------------------------------------------------------------

# a sentence ends at . ! ? followed by space and a capital, a digit, TeX or a bracket
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+(?=[A-Z0-9$\\(\[])")
# ... but not after an abbreviation ("Fig. 2", "et al. Smith", "Eq. (3)")
_ABBREVIATION = re.compile(
    r"\b(?:al|approx|app|ch|cf|cor|def|eqs?|e\.g|figs?|i\.e|lem|nos?|pp|props?|refs?|resp|"
    r"secs?|tab|thm|vol|vs)\.$",
    re.IGNORECASE,
)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence of `text` (surrounding whitespace excluded)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if _ABBREVIATION.search(text, max(0, m.start() - 8), m.start() + 1):
            continue
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        seg = text[s:e]
        s2 = s + len(seg) - len(seg.lstrip())
        e2 = e - (len(seg) - len(seg.rstrip()))
        if e2 > s2:
            out.append((s2, e2))
    return out


def occlusion_units(paper: Paper, max_units: int) -> list[Span]:
    """The title and the abstract's sentences, at most `max_units` (consecutive sentences are
    merged into equal groups when the abstract has more)."""
    title, abstract = paper
    units = [Span("title", *s) for s in _whole(title)]
    sentences = sentence_spans(abstract)
    room = max(1, max_units - len(units))
    if len(sentences) > room:
        bounds = [round(i * len(sentences) / room) for i in range(room + 1)]
        sentences = [(sentences[a][0], sentences[b - 1][1]) for a, b in itertools.pairwise(bounds)]
    return units + [Span("abstract", s, e) for s, e in sentences]


def _whole(text: str) -> list[tuple[int, int]]:
    s = len(text) - len(text.lstrip())
    e = len(text.rstrip())
    return [(s, e)] if e > s else []


class OcclusionExplainer:
    """Drop one unit (title, sentence) at a time; all variants of all papers in one call."""

    method = "occlusion"

    def __init__(self, predictor: Predictor, *, max_terms: int, max_sentences: int) -> None:
        if max_sentences < 1 or max_terms < 1:
            raise ValueError("max_sentences and max_terms must be >= 1")
        self.predictor = predictor
        self.max_terms = max_terms
        self.max_units = max_sentences

    def candidates(self, paper: Paper) -> list[list[Span]]:
        return [[u] for u in occlusion_units(paper, self.max_units)]

    def explain(self, papers: Sequence[Paper], labels: Sequence[str]) -> list[Explanation]:
        index = {lab: j for j, lab in enumerate(self.predictor.labels)}
        units = [occlusion_units(p, self.max_units) for p in papers]
        texts: list[str] = []
        for paper, us in zip(papers, units, strict=True):
            texts.append(model_text(*paper))
            texts.extend(model_text(*without(paper, [u])) for u in us)
        probs = self.predictor.probabilities(texts)[0] if texts else None
        out, row = [], 0
        for paper, us, label in zip(papers, units, labels, strict=True):
            j = index[label]
            full = float(probs[row, j])  # type: ignore[index]
            # rounded as shown: a unit listed as pushing the label never shows a weight of 0
            drops = [round(full - float(probs[row + 1 + i, j]), 6) for i in range(len(us))]  # type: ignore[index]
            row += 1 + len(us)
            ranked = sorted(
                (i for i, d in enumerate(drops) if d > 0), key=lambda i: (-drops[i], i)
            )[: self.max_terms]
            terms = [_unit_term(paper, us[i], drops[i]) for i in ranked]
            reason = None
            if not terms:
                reason = (
                    "removing any one part (the title or a sentence) does not lower the "
                    f"probability of {label}: no single part carries the answer"
                )
            out.append(Explanation("occlusion", label, round(full, 6), terms, [], reason))
        return out


def _unit_term(paper: Paper, span: Span, drop: float) -> Term:
    text = paper[FIELDS.index(span.field)][span.start : span.end]
    return Term(text, round(drop, 6), span.field, span.start, span.end, [span])
