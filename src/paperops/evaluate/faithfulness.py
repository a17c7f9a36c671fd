"""Are explanations faithful to the model? The deletion test: remove a paper's top-k explained
terms and the predicted label's calibrated probability should fall much more than when k random
terms of the same paper are removed (every occurrence of a term is removed; "terms" are what the
explainer names: words and word pairs for linear models, sentences for occlusion).

Reported (`Faithfulness`): the medians and means of both drops over the papers, `ratio` = median
top drop / median random drop (the issue's target: >= 2), the ratio of means, and `win_rate`, the
share of papers whose top-k drop beats their random drop. The random drop of a paper is the mean
over `draws` draws. A ratio of medians, not a median of per-paper ratios: a paper's random drop
is often ~0, and a ratio over ~0 says nothing. An explainer that names random terms scores ~1,
which is what the tests check it against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from paperops.data.text import model_text
from paperops.inference.explain import Explainer, Paper, Span, without
from paperops.inference.predictor import Predictor


@dataclass(frozen=True)
class Faithfulness:
    n: int  # papers measured
    skipped: int  # papers with no explained term (nothing to delete)
    k: int
    draws: int
    median_top: float
    median_random: float
    mean_top: float
    mean_random: float
    ratio: float | None  # median_top / median_random; None when the random median is <= 0
    ratio_of_means: float | None
    win_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deletion_drops(
    predictor: Predictor,
    explainer: Explainer,
    papers: Sequence[Paper],
    *,
    k: int = 5,
    draws: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per paper: (probability drop deleting its top-k terms, mean drop deleting k random
    terms) for the label it is predicted; plus how many papers had no term to delete."""
    rng = np.random.default_rng(seed)
    labels = [p.label for p in predictor.predict_papers(papers, 1)]
    explained = explainer.explain(papers, labels)
    texts: list[str] = []
    kept: list[tuple[int, int]] = []  # (row of the full text, label index)
    index = {lab: j for j, lab in enumerate(predictor.labels)}
    skipped = 0
    for paper, label, e in zip(papers, labels, explained, strict=True):
        top = e.terms[:k]
        pool = explainer.candidates(paper)
        if not top or len(pool) < len(top):
            skipped += 1
            continue
        kept.append((len(texts), index[label]))
        texts.append(model_text(*paper))
        texts.append(model_text(*without(paper, [s for t in top for s in t.spans])))
        for _ in range(draws):
            pick = rng.choice(len(pool), size=len(top), replace=False)
            spans: list[Span] = [s for i in pick for s in pool[int(i)]]
            texts.append(model_text(*without(paper, spans)))
    if not kept:
        return np.zeros(0), np.zeros(0), skipped
    probs = predictor.probabilities(texts)[0]
    top_drop = np.array([probs[r, j] - probs[r + 1, j] for r, j in kept])
    random_drop = np.array(
        [(probs[r, j] - probs[r + 2 : r + 2 + draws, j]).mean() for r, j in kept]
    )
    return top_drop, random_drop, skipped


def faithfulness(
    predictor: Predictor,
    explainer: Explainer,
    papers: Sequence[Paper],
    *,
    k: int = 5,
    draws: int = 5,
    seed: int = 0,
) -> Faithfulness:
    """The deletion test over `papers` (see the module docstring)."""
    top, rand, skipped = deletion_drops(predictor, explainer, papers, k=k, draws=draws, seed=seed)
    if len(top) == 0:
        raise ValueError(f"no paper had an explained term to delete ({skipped} skipped)")
    med_t, med_r = float(np.median(top)), float(np.median(rand))
    mean_t, mean_r = float(top.mean()), float(rand.mean())
    return Faithfulness(
        n=len(top),
        skipped=skipped,
        k=k,
        draws=draws,
        median_top=med_t,
        median_random=med_r,
        mean_top=mean_t,
        mean_random=mean_r,
        ratio=med_t / med_r if med_r > 0 else None,
        ratio_of_means=mean_t / mean_r if mean_r > 0 else None,
        win_rate=float((top > rand).mean()),
    )
