"""`paperops monitor drift`: a window of logged requests against the training reference.

Five checks, each a score with a threshold (configs/monitor/default.yaml):
- length: PSI of characters per paper (title + abstract);
- vocabulary: Jensen-Shannon divergence of word frequencies (top reference words + the rest);
- embedding: ROC AUC of a domain classifier told to separate window from reference embeddings
  (0.5 = it cannot), with the MMD permutation p-value beside it;
- label: PSI of the predicted label mix against the reference's label mix (chi-square beside it);
- accuracy: when users sent feedback, how far live accuracy falls below the accuracy the
  calibrated confidence promised for the same papers.
The report is JSON (the contract the API, Grafana and the retrain path read) plus HTML.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperops import __version__
from paperops.data.text import model_text
from paperops.monitor import stats
from paperops.monitor.report import write_reports
from paperops.monitor.stats import words

log = logging.getLogger(__name__)

CHECKS = ("length", "vocabulary", "embedding", "label", "accuracy")
FORMAT = 1
_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class DriftError(ValueError):
    """A drift job that cannot run as configured (bad window, no reference, no log)."""


def parse_window(spec: str | int | float, now: float) -> tuple[float | None, float]:
    """`30m`, `24h`, `7d`, `2w`, a number of seconds, or `all` -> (since, until=now)."""
    text = str(spec).strip().lower()
    if text == "all":
        return None, now
    if re.fullmatch(r"\d+(\.\d+)?", text):
        text += "s"
    m = _WINDOW.match(text)
    if not m or float(m.group(1)) <= 0:
        raise DriftError(
            f"monitor.window {spec!r} is not a window: use a positive duration like 30m, 24h, "
            "7d or 2w, or `all`"
        )
    return now - float(m.group(1)) * _UNITS[m.group(2)], now


@dataclass(frozen=True)
class DriftConfig:
    """configs/monitor/default.yaml as a plain object (validated on construction)."""

    request_log: str
    window: str = "24h"
    max_papers: int = 2000
    min_papers: int = 100
    min_feedback: int = 30
    processed_dir: str = "data/processed"
    reference_split: str = "train"
    reference_max_papers: int = 2000
    null_papers: int = 1000
    null_resamples: int = 200
    null_quantile: float = 0.99
    embedding_method: str = "encoder"
    encoder: str = "default"
    cache_dir: str | None = None
    batch_size: int = 64
    lsa_dims: int = 100
    top_words: int = 5000
    thresholds: dict[str, float] = field(default_factory=dict)
    seed: int = 42
    output_dir: str = "reports/drift"
    store: bool = True

    def __post_init__(self) -> None:
        if not self.request_log:
            raise DriftError("monitor.request_log is empty: point it at serve.request_log.url")
        for key in (
            "max_papers",
            "min_papers",
            "reference_max_papers",
            "top_words",
            "lsa_dims",
            "null_papers",
            "null_resamples",
        ):
            if int(getattr(self, key)) < 1:
                raise DriftError(f"monitor.{key} must be >= 1; got {getattr(self, key)}")
        if self.embedding_method not in ("encoder", "lsa"):
            raise DriftError(
                f"monitor.embedding.method must be encoder or lsa; got {self.embedding_method!r}"
            )
        if not 0.5 <= self.null_quantile < 1:
            raise DriftError(f"monitor.null.quantile must be in [0.5, 1); got {self.null_quantile}")
        missing = [c for c in CHECKS if c not in self.thresholds]
        if missing:
            raise DriftError(f"monitor.thresholds is missing {missing}")
        for name, value in self.thresholds.items():
            if name not in CHECKS:
                raise DriftError(f"monitor.thresholds.{name} is not a check (checks: {CHECKS})")
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise DriftError(f"monitor.thresholds.{name} must be a number; got {value!r}")

    @classmethod
    def from_config(cls, m: Any) -> DriftConfig:
        """`cfg.monitor` -> DriftConfig."""
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(m, resolve=True) if not isinstance(m, dict) else dict(m)
        ref, emb = d.get("reference", {}), d.get("embedding", {})
        return cls(
            request_log=str(d.get("request_log") or ""),
            window=str(d.get("window", "24h")),
            max_papers=int(d.get("max_papers", 2000)),
            min_papers=int(d.get("min_papers", 100)),
            min_feedback=int(d.get("min_feedback", 30)),
            processed_dir=str(ref.get("processed_dir", "data/processed")),
            reference_split=str(ref.get("split", "train")),
            reference_max_papers=int(ref.get("max_papers", 2000)),
            null_papers=int(ref.get("null_papers", 1000)),
            null_resamples=int(d.get("null", {}).get("resamples", 200)),
            null_quantile=float(d.get("null", {}).get("quantile", 0.99)),
            embedding_method=str(emb.get("method", "encoder")),
            encoder=str(emb.get("encoder", "default")),
            cache_dir=emb.get("cache_dir"),
            batch_size=int(emb.get("batch_size", 64)),
            lsa_dims=int(emb.get("lsa_dims", 100)),
            top_words=int(d.get("vocabulary", {}).get("top_words", 5000)),
            thresholds={k: float(v) for k, v in (d.get("thresholds") or {}).items()},
            seed=int(d.get("seed", 42)),
            output_dir=str(d.get("output_dir", "reports/drift")),
            store=bool(d.get("store", True)),
        )


# --- inputs --------------------------------------------------------------------------------


@dataclass
class Reference:
    """What the model learned from: a seeded sample for the text checks (`texts`), a disjoint
    `null` sample that shows how much the scores move on in-distribution windows, and the
    whole split's label mix."""

    texts: list[str]
    chars: np.ndarray
    null_texts: list[str]
    null_chars: np.ndarray
    label_share: dict[str, float]
    rows: int
    source: str


def load_reference(cfg: DriftConfig) -> Reference:

    path = Path(cfg.processed_dir) / f"{cfg.reference_split}.parquet"
    if not path.is_file():
        raise DriftError(
            f"no reference split at {path}: run `paperops data prepare` (or set "
            "monitor.reference.processed_dir)"
        )
    df = pd.read_parquet(path, columns=["title", "abstract", "label"])
    if len(df) < 20:
        raise DriftError(f"the reference split {path} has {len(df)} rows; drift needs >= 20")
    counts = df["label"].value_counts()
    share = {str(k): float(v) / len(df) for k, v in counts.items()}
    shuffled = df.sample(frac=1.0, random_state=cfg.seed)
    n_null = min(cfg.null_papers, len(df) // 3)  # small splits: a third stays the null pool
    n_ref = min(cfg.reference_max_papers, len(df) - n_null)
    sample, null = shuffled.iloc[:n_ref], shuffled.iloc[n_ref : n_ref + n_null]

    def texts(d: pd.DataFrame) -> list[str]:
        return [model_text(t, a) for t, a in zip(d["title"], d["abstract"], strict=True)]

    def chars(d: pd.DataFrame) -> np.ndarray:
        return (d["title"].str.len() + d["abstract"].str.len()).to_numpy(float)

    return Reference(
        texts(sample), chars(sample), texts(null), chars(null), share, len(df), str(path)
    )


@dataclass
class Window:
    rows: list[dict[str, Any]]
    since: float | None
    until: float
    spec: str

    @property
    def texts(self) -> list[str]:

        return [model_text(r["title"], r["abstract"]) for r in self.rows if r["title"] is not None]


def load_window(cfg: DriftConfig, window: str | None = None, now: float | None = None) -> Window:
    # deferred: pulls sqlalchemy
    from paperops.requestlog.queries import read_predictions

    spec = window or cfg.window
    since, until = parse_window(spec, time.time() if now is None else now)
    try:
        rows = read_predictions(cfg.request_log, since=since, until=until, limit=cfg.max_papers)
    except FileNotFoundError as e:
        raise DriftError(str(e)) from None
    return Window(rows, since, until, spec)


# --- checks --------------------------------------------------------------------------------


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
    from paperops.models.encoder import EmbeddingCache, embed, load_encoder

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


# --- the job -------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def compute(cfg: DriftConfig, ref: Reference, win: Window) -> dict[str, Any]:
    """The drift report (a JSON-ready dict) of `win` against `ref`."""
    started = time.perf_counter()
    n = len(win.rows)
    versions = Counter(str(r["model_version"]) for r in win.rows)
    report: dict[str, Any] = {
        "format": FORMAT,
        "paperops_version": __version__,
        "ts": time.time(),
        "created_at": _iso(time.time()),
        "window": {
            "spec": win.spec,
            "since": _iso(win.since),
            "until": _iso(win.until),
            "papers": n,
            "with_text": sum(r["title"] is not None for r in win.rows),
            "with_feedback": sum(r.get("feedback_label") is not None for r in win.rows),
            "model_versions": dict(versions),
            "first": _iso(win.rows[0]["ts"]) if n else None,
            "last": _iso(win.rows[-1]["ts"]) if n else None,
        },
        "reference": {"source": ref.source, "rows": ref.rows, "sample": len(ref.texts)},
        "thresholds": dict(cfg.thresholds),
    }
    if n < cfg.min_papers:
        reason = f"{n} logged papers in the window (< monitor.min_papers {cfg.min_papers})"
        report["status"] = "insufficient_data"
        report["checks"] = {c: _check(c, cfg, None, "", reason=reason) for c in CHECKS}
    else:
        win_texts = win.texts
        report["status"] = "ok"
        report["checks"] = {
            "length": check_length(cfg, ref, win),
            "vocabulary": check_vocabulary(cfg, ref, win_texts),
            "embedding": check_embedding(cfg, ref, win_texts),
            "label": check_label(cfg, ref, win),
            "accuracy": check_accuracy(cfg, win),
        }
    report["drifted_checks"] = [c for c, v in report["checks"].items() if v["drifted"]]
    report["drifted"] = bool(report["drifted_checks"])
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def run_drift(cfg: DriftConfig, window: str | None = None) -> dict[str, Any]:
    """Load, compute, write reports (JSON + HTML) and store the report for the API."""

    ref = load_reference(cfg)
    win = load_window(cfg, window)
    log.info(
        "drift: %d logged papers (window %s) vs %d reference papers",
        len(win.rows),
        win.spec,
        len(ref.texts),
    )
    report = compute(cfg, ref, win)
    write_reports(report, Path(cfg.output_dir), ref=ref, win=win)
    if cfg.store:
        # deferred: pulls sqlalchemy
        from paperops.requestlog.queries import save_drift_report

        save_drift_report(cfg.request_log, report)
    return report
