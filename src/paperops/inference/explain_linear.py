"""Exact explanations of the linear families (tfidf, hybrid).

A linear model's score for label c is b_c + sum_j x_j * w_cj over the paper's features, so the
contribution of every word and word pair is known exactly, with no sampling. The features are
mapped back to where they occur in the title and abstract by re-tokenising both fields with the
vectorizer's own token pattern and lower-casing (offsets kept through the lower-casing), so the
web page can highlight them. What is not a listed term is reported in `parts`: the intercept,
the hybrid's embedding block as ONE aggregate "semantic (embedding)" contribution (its 384
dimensions have no words to point at; it is the model's logit minus the intercept and the
TF-IDF terms, so it is exact too), and "other terms" (negative, beyond `max_terms`, or a rare
feature that could not be placed in the text). terms + parts = score, the label's logit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from paperops.data.text import model_text
from paperops.inference.explanation import (
    FIELDS,
    CannotExplain,
    Explanation,
    Paper,
    Part,
    Span,
    Term,
    describe,
)
from paperops.inference.predictor import Predictor

Located = dict[int, tuple[str, list[Span]]]  # feature -> (text as written, every span)


class LinearExplainer:
    """x_j * w_cj per feature for tfidf and hybrid bundles served by scikit-learn."""

    method = "linear"

    def __init__(self, predictor: Predictor, *, max_terms: int) -> None:
        if max_terms < 1:
            raise ValueError("max_terms must be >= 1")
        model: Any = predictor.runtime.model  # type: ignore[attr-defined]
        self.hybrid = model.family == "hybrid"
        if self.hybrid:
            vec, clf = model.vectorizer, model.clf
        else:
            vec, clf = model.pipeline.named_steps["tfidf"], model.pipeline.named_steps["clf"]
        custom = vec.analyzer != "word" or vec.tokenizer or vec.preprocessor or vec.stop_words
        if custom or vec.strip_accents:
            raise CannotExplain(
                f"{describe(predictor.info)}: its vectorizer has a custom analyzer, tokenizer, "
                "accent stripping or stop words, so its features cannot be mapped back to words"
            )
        self.model, self.vec, self.max_terms = model, vec, max_terms
        self.token_re = re.compile(vec.token_pattern)
        self.group = 1 if self.token_re.groups == 1 else 0
        self.ngrams = tuple(vec.ngram_range)
        coef = clf.coef_
        self.coef = np.asarray(coef.toarray() if hasattr(coef, "toarray") else coef, np.float64)
        self.intercept = np.broadcast_to(
            np.asarray(clf.intercept_, np.float64), (self.coef.shape[0],)
        )
        self.position = {int(c): p for p, c in enumerate(clf.classes_)}
        self.label_index = {lab: j for j, lab in enumerate(predictor.labels)}

    def weights(self, label: str) -> tuple[np.ndarray, float]:
        """(w_c over every feature, b_c) such that the label's logit is b_c + x . w_c."""
        p = self.position[self.label_index[label]]
        if self.coef.shape[0] == 1:  # binary: logits are [-s, s] (see TfidfClassifier.logits)
            sign = 1.0 if p == 1 else -1.0
            return sign * self.coef[0], sign * float(self.intercept[0])
        return self.coef[p], float(self.intercept[p])

    def candidates(self, paper: Paper) -> list[list[Span]]:
        return [spans for _, spans in self.locate(paper).values()]

    def explain(self, papers: Sequence[Paper], labels: Sequence[str]) -> list[Explanation]:
        if not papers:
            return []
        texts = [model_text(*p) for p in papers]
        X = self.vec.transform(texts).tocsr()
        logits = self.model.logits(texts) if self.hybrid else None
        out = []
        for i, (paper, label) in enumerate(zip(papers, labels, strict=True)):
            row = X.getrow(i)
            w, b = self.weights(label)
            contrib = row.data.astype(np.float64) * w[row.indices]
            words = float(contrib.sum())
            parts = [Part("intercept", round(b, 6))]
            score = b + words
            if logits is not None:
                score = float(logits[i, self.label_index[label]])
                parts.append(Part("semantic (embedding)", round(score - b - words, 6)))
            located = self.locate(paper)
            order = sorted(
                (k for k in range(row.nnz) if contrib[k] > 0 and int(row.indices[k]) in located),
                key=lambda k: -contrib[k],
            )[: self.max_terms]
            terms = [_term(located[int(row.indices[k])], float(contrib[k])) for k in order]
            listed = float(sum(contrib[k] for k in order))
            parts.append(Part("other terms", round(words - listed, 6)))
            out.append(
                Explanation(
                    "linear", label, round(score, 6), terms, parts, _reason(row.nnz, terms, label)
                )
            )
        return out

    def locate(self, paper: Paper) -> Located:
        """Every vocabulary feature of `paper` with its text as written and all its spans."""
        tokens: list[tuple[str, str, int, int]] = []
        for name, text in zip(FIELDS, paper, strict=True):
            low, starts = lowered(text) if self.vec.lowercase else (text, None)
            for m in self.token_re.finditer(low):
                s, e = m.span(self.group)
                if starts is not None:
                    s, e = starts[s], starts[e - 1] + 1
                tokens.append((m.group(self.group), name, s, e))
        vocab = self.vec.vocabulary_
        found: Located = {}
        lo, hi = self.ngrams
        for n in range(lo, hi + 1):
            for i in range(len(tokens) - n + 1):
                gram = tokens[i : i + n]
                j = vocab.get(" ".join(t[0] for t in gram))
                if j is None:
                    continue
                spans = _spans(gram)
                text = " ".join(paper[FIELDS.index(s.field)][s.start : s.end] for s in spans)
                found.setdefault(int(j), (text, []))[1].extend(spans)
        return found


def lowered(text: str) -> tuple[str, list[int] | None]:
    """`text.lower()` and, when lower-casing changed its length (e.g. 'İ' -> 'i̇'), the original
    index of every lowered character; None when the two align one to one."""
    low = text.lower()
    if len(low) == len(text):
        return low, None
    chars: list[str] = []
    starts: list[int] = []
    for i, ch in enumerate(text):
        lc = ch.lower()
        chars.append(lc)
        starts.extend([i] * len(lc))
    return "".join(chars), starts


def _spans(gram: list[tuple[str, str, int, int]]) -> list[Span]:
    """One span per field an n-gram covers (a pair may join the title's last word to the
    abstract's first)."""
    out: list[Span] = []
    for _, name, s, e in gram:
        if out and out[-1].field == name:
            out[-1] = Span(name, out[-1].start, e)
        else:
            out.append(Span(name, s, e))
    return out


def _term(located: tuple[str, list[Span]], weight: float) -> Term:
    text, spans = located
    first = spans[0]
    return Term(text, round(weight, 6), first.field, first.start, first.end, list(spans))


def _reason(known: int, terms: list[Term], label: str) -> str | None:
    if terms:
        return None
    if known == 0:
        return (
            "none of this paper's words or word pairs is in the model's vocabulary: the "
            "answer rests on the intercept (and, for a hybrid model, the embedding) alone"
        )
    return f"none of the {known} known terms raises the score of {label}: all count against it"
