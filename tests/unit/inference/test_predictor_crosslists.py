"""The serving predictor answers cross-lists from the bundle's head: the same suggestions as the
head itself (minus the primary), only for the texts that asked, from one tokenization, through a
plain bundle and a tfidf export alike, and through the micro-batcher with mixed requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from paperops.inference.predictor import NoCrossLists, load_predictor
from paperops.models.multilabel_io import load_cross_lists
from paperops.serve.batching import MicroBatcher
from tests.conftest import CATEGORY_COUNTS, make_records

TEXTS = [f"{r['title']}\n{r['abstract']}" for r in make_records(CATEGORY_COUNTS, seed=9)[::7]]


def test_cross_lists_are_the_heads_suggestions_without_the_primary(
    category_bundle: Path,
) -> None:
    p = load_predictor(category_bundle)
    assert p.cross_lists is not None and p.info.cross_lists is not None
    assert p.info.cross_lists["labels"] == len(p.cross_lists.labels)
    assert p.info.cross_lists["shared_features"] is True
    got = p.predict_texts(TEXTS, 3, cross_lists=True)
    head = load_cross_lists(category_bundle)
    assert head is not None
    ref = head.suggest(TEXTS, [g.label for g in got])
    probs = head.predict_proba(TEXTS)
    some = 0
    for g, want, row in zip(got, ref, probs, strict=True):
        assert g.cross_lists is not None
        assert [c.label for c in g.cross_lists] == [s.label for s in want if s.label != g.label]
        ps = [c.probability for c in g.cross_lists]
        assert ps == sorted(ps, reverse=True)
        for c in g.cross_lists:
            j = head.labels.index(c.label)
            assert c.probability == pytest.approx(row[j], abs=1e-6)
            assert row[j] >= head.thresholds[j]  # every suggestion passed its threshold
            assert c.archive == c.label.split(".")[0] and c.name
        some += len(g.cross_lists)
    assert some > 0  # the fixture's papers are cross-listed: the head does suggest
    # without the flag: the very same answers, without the key
    plain = p.predict_texts(TEXTS, 3)
    for g, q in zip(got, plain, strict=True):
        assert q.cross_lists is None and "cross_lists" not in q.to_dict()
        d = g.to_dict()
        d.pop("cross_lists")
        assert d == q.to_dict()


def test_a_mask_answers_only_the_rows_that_asked_from_one_tokenization(
    category_bundle: Path,
) -> None:
    p = load_predictor(category_bundle)
    vec = p.runtime.model.vectorizer  # type: ignore[attr-defined]
    calls: list[int] = []
    transform = vec.transform

    def counted(texts: list[str]) -> object:
        calls.append(len(texts))
        return transform(texts)

    vec.transform = counted
    try:
        mask = [i % 2 == 0 for i in range(len(TEXTS))]
        got = p.predict_texts(TEXTS, 3, cross_lists=mask)
        assert calls == [len(TEXTS)]  # the model and the head share one transform
    finally:
        del vec.transform
    full = p.predict_texts(TEXTS, 3, cross_lists=True)
    for g, f, want in zip(got, full, mask, strict=True):
        assert g.cross_lists == (f.cross_lists if want else None)
    with pytest.raises(ValueError, match="mask has 1 entries for"):
        p.predict_texts(TEXTS, 3, cross_lists=[True])


def test_a_model_without_a_head_names_itself(tfidf_bundle: Path) -> None:
    p = load_predictor(tfidf_bundle)
    assert p.cross_lists is None and p.info.cross_lists is None
    with pytest.raises(NoCrossLists, match=r"model tfidf v\S+ \(tfidf\) was trained without"):
        p.predict_texts(TEXTS[:1], 3, cross_lists=True)
    assert p.predict_texts(TEXTS[:1], 3, cross_lists=[False])[0].cross_lists is None


def test_a_tfidf_export_serves_the_same_cross_lists(category_bundle: Path, tmp_path: Path) -> None:
    from paperops.export.classifier import export_bundle

    out = tmp_path / "export"
    export_bundle(category_bundle, out, processed_dir=category_bundle.parent / "processed")
    exported, bundle = load_predictor(out), load_predictor(category_bundle)
    assert exported.info.runtime == "sklearn" and exported.cross_lists is not None
    a = exported.predict_texts(TEXTS, 3, cross_lists=True)
    b = bundle.predict_texts(TEXTS, 3, cross_lists=True)
    assert [x.cross_lists for x in a] == [x.cross_lists for x in b]


def test_the_batcher_gives_each_request_its_own_kind_of_answer(category_bundle: Path) -> None:
    p = load_predictor(category_bundle)
    solo_plain = p.predict_texts(TEXTS, 3)
    solo_cross = p.predict_texts(TEXTS, 3, cross_lists=True)
    b = MicroBatcher(p, max_batch_size=64, max_wait_ms=50).start()

    async def go() -> list[object]:
        return list(
            await asyncio.gather(
                *(b.submit([t], 3, cross_lists=i % 3 == 0) for i, t in enumerate(TEXTS))
            )
        )

    try:
        results = asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        assert b.close(30)
    assert b.stats.batches < len(TEXTS)  # requests did share batches
    for i, res in enumerate(results):
        want = solo_cross[i] if i % 3 == 0 else solo_plain[i]
        assert res.predictions[0] == want  # type: ignore[attr-defined]
    assert np.mean([r.predictions[0].cross_lists is None for r in results]) > 0.5  # type: ignore[attr-defined]


def test_a_swap_to_a_model_without_a_head_fails_no_batch(
    category_bundle: Path, tfidf_bundle: Path
) -> None:
    """A reload between a request's check and its batch: the answer comes without cross-lists
    (the route then answers that client 422), and nobody's batch fails."""
    headless = load_predictor(tfidf_bundle)
    b = MicroBatcher(load_predictor(category_bundle), max_batch_size=8, max_wait_ms=0).start()
    b.swap(headless)

    async def go() -> list[object]:
        return list(
            await asyncio.gather(b.submit(TEXTS[:2], 3, cross_lists=True), b.submit(TEXTS[2:4]))
        )

    try:
        asked, plain = asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        assert b.close(30)
    assert asked.predictor is headless  # type: ignore[attr-defined]
    assert [p.cross_lists for p in asked.predictions] == [None, None]  # type: ignore[attr-defined]
    assert plain.predictions == headless.predict_texts(TEXTS[2:4], 3)  # type: ignore[attr-defined]


def test_a_head_with_its_own_vectorizer_tokenizes_for_itself(
    category_bundle: Path, tmp_path: Path
) -> None:
    """share_features=false (what a neural primary gets): the head tokenizes the texts that
    asked, and answers as it does alone."""
    from tests.conftest import _train_bundle

    processed = category_bundle.parent / "processed"
    bundle = _train_bundle(tmp_path, processed, "category", "model.min_df=1",
                           "train.cross_lists.min_papers=5", "train.cross_lists.min_df=1",
                           "train.cross_lists.share_features=false")  # fmt: skip
    p = load_predictor(bundle)
    assert p.cross_lists is not None and not p.cross_lists.shared
    assert p.info.cross_lists is not None and p.info.cross_lists["shared_features"] is False
    mask = [i % 2 == 1 for i in range(len(TEXTS))]
    got = p.predict_texts(TEXTS, 3, cross_lists=mask)
    asked = [t for t, m in zip(TEXTS, mask, strict=True) if m]
    primaries = [g.label for g, m in zip(got, mask, strict=True) if m]
    want = iter(p.cross_lists.suggest(asked, primaries))
    for g, m in zip(got, mask, strict=True):
        if not m:
            assert g.cross_lists is None
            continue
        assert g.cross_lists is not None
        assert [c.label for c in g.cross_lists] == [
            s.label for s in next(want) if s.label != g.label
        ]
    assert sum(len(g.cross_lists or ()) for g in got) > 0
