"""The drift checks: text length, vocabulary, sentence embeddings (a classifier two-sample test),
predicted-label mix and live accuracy from feedback. Each compares the window with the training
reference against a threshold from the bootstrap noise floor (`monitor.stats`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from paperops.monitor import stats
from paperops.monitor.config import DriftConfig, Reference, Window
from paperops.monitor.stats import words

log = logging.getLogger(__name__)


def _check(
    name: str,
    cfg: DriftConfig,
    score: float | None,
    method: str,
    null: np.ndarray | None = None,
    **details: Any,
) -> dict[str, Any]:
    """One check's verdict. With `null` (the score on reference windows of the window's size),
    the threshold is the configured one or the null's `null_quantile`, whichever is higher:
    a small window is noisy, and noise must not read as drift."""
    configured = cfg.thresholds[name]
    threshold = configured
    if null is not None and len(null):
        floor = float(np.quantile(null, cfg.null_quantile))
        details = {
            "configured_threshold": configured,
            "null_quantile": round(floor, 6),
            "null_median": round(float(np.median(null)), 6),
            **details,
        }
        threshold = max(configured, floor)
    threshold = round(threshold, 6)
    if score is None:
        return {
            "score": None,
            "threshold": threshold,
            "drifted": False,
            "method": method,
            "status": "skipped",
            **details,
        }
    score = float(score)
    return {
        "score": round(score, 6),
        "threshold": threshold,
        "drifted": bool(score > threshold),
        "method": method,
        "status": "ok",
        **details,
    }


def _resample(pool_size: int, n: int, cfg: DriftConfig) -> list[np.ndarray]:
    """Bootstrap index sets: `n` rows drawn with replacement from a pool of reference papers."""
    rng = np.random.default_rng(cfg.seed)
    return [rng.integers(0, pool_size, n) for _ in range(cfg.null_resamples)]


def check_length(cfg: DriftConfig, ref: Reference, win: Window) -> dict[str, Any]:
    cur = np.array([r["text_chars"] for r in win.rows], float)
    d, p = stats.ks(ref.chars, cur)
    null = np.array(
        [
            stats.psi(ref.chars, ref.null_chars[i])
            for i in _resample(len(ref.null_chars), len(cur), cfg)
        ]
    )
    return _check(
        "length",
        cfg,
        stats.psi(ref.chars, cur),
        "PSI over reference deciles",
        null,
        reference_median=float(np.median(ref.chars)),
        window_median=float(np.median(cur)),
        ks_statistic=round(d, 6),
        ks_p_value=p,
    )


def check_vocabulary(cfg: DriftConfig, ref: Reference, win_texts: list[str]) -> dict[str, Any]:
    if not win_texts:
        return _check("vocabulary", cfg, None, "JS divergence", reason=_NO_TEXT)
    ref_counts = stats.word_counts(ref.texts)
    cur_counts = stats.word_counts(win_texts)
    top = [w for w, _ in ref_counts.most_common(cfg.top_words)]
    index = {w: i for i, w in enumerate(top)}
    other = len(top)  # every other word shares the last bucket

    def bucket(c: Counter[str]) -> np.ndarray:
        v = np.zeros(len(top) + 1)
        for w, n in c.items():
            v[index.get(w, other)] += n
        return v

    ref_v, cur_v = bucket(ref_counts), bucket(cur_counts)
    score = stats.js_divergence_arrays(ref_v, cur_v)
    # the null: the same statistic for reference windows (null pool) of this window's size
    null_rows = np.array([bucket(Counter(words(t))) for t in ref.null_texts])
    null = np.array(
        [
            stats.js_divergence_arrays(ref_v, null_rows[i].sum(axis=0))
            for i in _resample(len(null_rows), len(win_texts), cfg)
        ]
    )
    ref_total, cur_total = ref_v.sum(), cur_v.sum()
    # words whose share grew most (smoothed log ratio): what the new traffic talks about
    gained = sorted(
        (
            (
                math.log((cur_counts[w] + 1) / (cur_total + 1))
                - math.log((ref_counts[w] + 1) / (ref_total + 1)),
                w,
            )
            for w, n in cur_counts.items()
            if n >= 5
        ),
        reverse=True,
    )[:15]
    return _check(
        "vocabulary",
        cfg,
        score,
        "Jensen-Shannon divergence (bits) of word frequencies",
        null,
        top_words=len(top),
        reference_other_share=round(ref_v[other] / max(ref_total, 1), 4),
        window_other_share=round(cur_v[other] / max(cur_total, 1), 4),
        unseen_word_share=round(
            sum(n for w, n in cur_counts.items() if w not in ref_counts) / max(cur_total, 1), 4
        ),
        rising_words=[w for _, w in gained],
    )


_NO_TEXT = "the request log holds no text (serve.request_log.store_text is false)"


def embed_texts(cfg: DriftConfig, ref_texts: list[str], win_texts: list[str]) -> tuple:
    """(reference, window) embeddings and a description of how they were made."""
    if cfg.embedding_method == "lsa":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=50_000)
        x_ref = vec.fit_transform(ref_texts)
        dims = max(2, min(cfg.lsa_dims, x_ref.shape[1] - 1, len(ref_texts) - 1))
        svd = TruncatedSVD(n_components=dims, random_state=cfg.seed).fit(x_ref)
        return (
            svd.transform(x_ref),
            svd.transform(vec.transform(win_texts)),
            f"TF-IDF + SVD ({dims} dims) fitted on the reference",
        )
    # deferred: pulls torch
    from paperops.models.embedding_cache import EmbeddingCache
    from paperops.models.encoder import embed, load_encoder

    encoder = load_encoder(cfg.encoder)
    ref_emb = (
        EmbeddingCache(Path(cfg.cache_dir)).get_or_compute(
            encoder, ref_texts, cfg.batch_size, progress=False
        )
        if cfg.cache_dir
        else embed(encoder, ref_texts, cfg.batch_size, progress=False)
    )
    win_emb = embed(encoder, win_texts, cfg.batch_size, progress=False)
    return ref_emb, win_emb, f"sentence encoder {cfg.encoder} ({encoder.dim} dims)"


def check_embedding(cfg: DriftConfig, ref: Reference, win_texts: list[str]) -> dict[str, Any]:
    if not win_texts:
        return _check("embedding", cfg, None, "domain classifier ROC AUC", reason=_NO_TEXT)
    ref_x, win_x, how = embed_texts(cfg, ref.texts, win_texts)
    auc = stats.domain_auc(ref_x, win_x, seed=cfg.seed)
    mmd, p = stats.mmd_rbf(ref_x, win_x, seed=cfg.seed)
    return _check(
        "embedding",
        cfg,
        auc,
        "domain classifier ROC AUC (0.5 = indistinguishable)",
        embeddings=how,
        mmd2=round(mmd, 6),
        mmd_p_value=p,
    )


def check_label(cfg: DriftConfig, ref: Reference, win: Window) -> dict[str, Any]:
    counts = Counter(r["label"] for r in win.rows)
    chi2, p = stats.chi_square(ref.label_share, counts)
    n = sum(counts.values())
    labels = sorted(set(ref.label_share) | set(counts), key=lambda k: -ref.label_share.get(k, 0))
    table = [
        {
            "label": k,
            "reference": round(ref.label_share.get(k, 0.0), 4),
            "window": round(counts.get(k, 0) / n, 4),
        }
        for k in labels
    ]
    keys = list(ref.label_share)
    probs = np.array([ref.label_share[k] for k in keys])
    rng = np.random.default_rng(cfg.seed)
    draws = rng.multinomial(n, probs / probs.sum(), size=cfg.null_resamples)
    null = np.array(
        [stats.categorical_psi(ref.label_share, dict(zip(keys, d, strict=True))) for d in draws]
    )
    unknown = sorted(set(counts) - set(ref.label_share))
    return _check(
        "label",
        cfg,
        stats.categorical_psi(ref.label_share, counts),
        "PSI of predicted labels vs reference labels",
        null,
        chi_square=round(chi2, 4),
        chi_square_p_value=p,
        labels=table,
        unknown_labels=unknown,
    )


def check_accuracy(cfg: DriftConfig, win: Window) -> dict[str, Any]:
    fb = [r for r in win.rows if r.get("feedback_label") is not None]
    method = "calibrated confidence minus live accuracy on papers with feedback"
    if len(fb) < cfg.min_feedback:
        return _check(
            "accuracy",
            cfg,
            None,
            method,
            feedback=len(fb),
            reason=f"{len(fb)} papers with feedback (< monitor.min_feedback {cfg.min_feedback})",
        )
    correct = np.array([r["label"] == r["feedback_label"] for r in fb], float)
    expected = float(np.mean([r["confidence"] for r in fb]))
    acc = float(correct.mean())
    lo, hi = _wilson(int(correct.sum()), len(fb))
    return _check(
        "accuracy",
        cfg,
        max(0.0, expected - acc),
        method,
        feedback=len(fb),
        live_accuracy=round(acc, 4),
        live_accuracy_95ci=[lo, hi],
        expected_accuracy=round(expected, 4),
    )


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(centre - half, 4), round(centre + half, 4)
