"""The Predictor's answers: a category model also answers the archive, and the two agree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from paperops.inference.predictor import ArchiveRollup, ModelInfo, Predictor

CATEGORIES = ["astro-ph.GA", "cs.CV", "cs.LG", "eess.SP", "hep-th", "math.AG", "math.NT"]


class FixedRuntime:
    """Logits drawn once per text from a seeded RNG: a stand-in model with known outputs."""

    kind = "test"

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        return rng.normal(0, 2, size=(len(texts), len(self.labels)))


def _predictor(labels: list[str]) -> Predictor:
    info = ModelInfo("m", "1", "test", "test", "here", len(labels))
    return Predictor(FixedRuntime(labels), None, info)


def test_archive_probability_is_the_sum_of_its_categories() -> None:
    pred = _predictor(CATEGORIES)
    texts = [f"paper {i}" for i in range(50)]
    probs, _ = pred.probabilities(texts)
    answers = pred.predict_texts(texts, top_k=7)
    for row, ans in zip(probs, answers, strict=True):
        assert ans.archive is not None
        assert ans.label.split(".")[0] == ans.archive.label  # the two levels never disagree
        members = [j for j, c in enumerate(CATEGORIES) if c.split(".")[0] == ans.archive.label]
        assert ans.archive.probability == pytest.approx(row[members].sum(), abs=1e-6)
        assert ans.archive.probability >= ans.confidence
    sums = ArchiveRollup.for_labels(CATEGORIES).sums(probs)  # type: ignore[union-attr]
    assert sums.shape == (50, 5) and np.allclose(sums.sum(axis=1), 1.0)


def test_archive_model_and_custom_labels() -> None:
    (ans,) = _predictor(["cs", "hep-th", "math"]).predict_texts(["x"])
    assert ans.archive is not None and ans.archive.label == ans.label
    assert ans.archive.probability == pytest.approx(ans.confidence, abs=1e-6)
    (custom,) = _predictor(["spam", "ham"]).predict_texts(["x"])
    assert custom.archive is None  # no taxonomy, no archive: never a wrong one
    # a legacy or alias code rolls up to its modern archive (cs.SY is eess.SY)
    assert ArchiveRollup.for_labels(["cs.SY", "eess.SP"]).archives == ["eess"]  # type: ignore[union-attr]
