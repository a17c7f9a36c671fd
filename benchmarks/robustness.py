"""Classifier robustness under synthetic shifts of the held-out test split, next to the clean score.

Shifts (each a small pure, seeded function below, applied to (title, abstract) pairs):
truncated abstracts (first 50% / 25% of the words), title only (abstract dropped), and typos
(character swaps / deletions / insertions in 5% / 10% of the words). Period shift, two ways:
the stratified test split sliced by submission month (oldest vs newest 20%), and a tfidf model
retrained on a time split (oldest 70% of papers by update_date -> train, newest 10% -> test, as
`data.split=time` would give) compared with the stratified model on the same unseen papers.

Models: the trained tfidf bundle (models/tfidf, calibrated) on the whole test split, and the
embedding bundle (models/demo_embedding) on a seeded stratified sample (MiniLM encodes ~25 texts/s
on 2 threads, and every shifted text must be re-encoded); tfidf is also scored on that sample.

Knobs (env): PAPEROPS_BENCH_SCALE=quick (small caps, < 1 min: what the unit test uses) or full
(default); PAPEROPS_PROCESSED, PAPEROPS_BENCH_TFIDF, PAPEROPS_BENCH_EMBEDDING (bundle dirs; an
empty value skips the embedding model), PAPEROPS_EMBED_CACHE, PAPEROPS_BENCH_THREADS (default 1).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, write_result

Pair = tuple[str, str]

# ---- perturbations: pure and deterministic (same input + seed -> same output) ----------------


def truncate_words(text: str, fraction: float) -> str:
    """The first ceil(fraction * n) whitespace-separated words of `text` (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    words = text.split()
    if not words:
        return ""
    return " ".join(words[: max(1, math.ceil(fraction * len(words)))])


def _typo(word: str, rng: random.Random) -> str:
    """One character edit that always changes the word: swap, delete or insert a letter."""
    op = rng.choice(("swap", "delete", "insert"))
    swaps = [j for j in range(len(word) - 1) if word[j] != word[j + 1]]
    if op == "swap" and swaps:
        j = rng.choice(swaps)
        return word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    if op == "delete" and len(word) >= 2:
        j = rng.randrange(len(word))
        return word[:j] + word[j + 1 :]
    j = rng.randrange(len(word) + 1)
    return word[:j] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[j:]


def add_typos(text: str, rate: float, seed: int) -> str:
    """Exactly round(rate * n) of the n words that contain a letter get one typo each.

    Seeded by (seed, text) — not by position — so a paper gets the same noise in every run.
    Whitespace is normalised to single spaces (the prepared data already is).
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    words = text.split()
    candidates = [i for i, w in enumerate(words) if any(c.isalpha() for c in w)]
    k = round(rate * len(candidates))
    rng = random.Random(f"{seed}\x00{text}")  # str seeds hash with sha512: stable across runs
    for i in rng.sample(candidates, k):
        words[i] = _typo(words[i], rng)
    return " ".join(words)


def title_only(title: str, abstract: str) -> Pair:
    """Drop the abstract. Models accept `model_text(title, "")`; the HTTP API wants a non-blank
    abstract, so a client with a title only must send some placeholder instead."""
    return title, ""


Shift = Callable[[str, str, int], Pair]
SHIFTS: dict[str, tuple[str, Shift]] = {
    "clean": ("unchanged test papers", lambda t, a, s: (t, a)),
    "abstract_50": (
        "abstract cut to its first 50% of words",
        lambda t, a, s: (t, truncate_words(a, 0.5)),
    ),
    "abstract_25": (
        "abstract cut to its first 25% of words",
        lambda t, a, s: (t, truncate_words(a, 0.25)),
    ),
    "title_only": ("abstract dropped (title only)", lambda t, a, s: title_only(t, a)),
    "typos_5": (
        "typos in 5% of words (title and abstract)",
        lambda t, a, s: (add_typos(t, 0.05, s), add_typos(a, 0.05, s)),
    ),
    "typos_10": (
        "typos in 10% of words (title and abstract)",
        lambda t, a, s: (add_typos(t, 0.10, s), add_typos(a, 0.10, s)),
    ),
}


def apply_shift(name: str, pairs: list[Pair], seed: int = 0) -> list[str]:
    """Model texts (exactly as training builds them) of the shifted papers."""
    from paperops.data.text import model_text

    fn = SHIFTS[name][1]
    return [model_text(*fn(t, a, seed)) for t, a in pairs]


# ---- period ------------------------------------------------------------------------------------

_NEW_ID = re.compile(r"^(\d{3,4})\.\d{4,5}(?:v\d+)?$")
_OLD_ID = re.compile(r"^[a-z][a-z-]*(?:\.[a-z-]+)?/(\d{2})(\d{2})\d{3}(?:v\d+)?$", re.IGNORECASE)


def submission_month(arxiv_id: str, update_date: str) -> str:
    """'YYYY-MM' of the first version from the arXiv id, else update_date's month."""
    s = str(arxiv_id).strip()
    if m := _NEW_ID.match(s):
        yymm = m.group(1).zfill(4)
        return f"20{yymm[:2]}-{yymm[2:]}"
    if m := _OLD_ID.match(s):
        yy = int(m.group(1))
        return f"{1900 + yy if yy >= 91 else 2000 + yy}-{m.group(2)}"
    return str(update_date)[:7]


# ---- scoring -----------------------------------------------------------------------------------


def score(
    y: np.ndarray, pred: np.ndarray, probs: np.ndarray | None, k: int, clean_pred: Any = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the classes present in y or pred), and when probabilities are
    given mean top-label confidence and ECE (15 bins)."""
    from sklearn.metrics import f1_score

    from paperops.uncertainty.calibrate import expected_calibration_error

    if not len(y):  # e.g. an empty period slice on tiny data: no score, not NaN (strict JSON)
        return {"n": 0, "accuracy": None, "macro_f1": None}
    out: dict[str, Any] = {
        "n": len(y),
        "accuracy": float(np.mean(pred == y)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }
    if probs is not None and len(y):
        out["mean_confidence"] = float(probs.max(axis=1).mean())
        out["ece"] = float(expected_calibration_error(probs, y, n_bins=15))
    if clean_pred is not None:
        out["changed"] = float(np.mean(pred != clean_pred))
    return out


def paired_delta_ci(
    base_correct: np.ndarray, new_correct: np.ndarray, seed: int, n_boot: int = 1000
) -> list[float] | None:
    """95% paired-bootstrap interval of mean(new_correct - base_correct) over the same papers:
    tells a real accuracy change from sampling noise on a small test set."""
    diff = np.asarray(new_correct, dtype=np.float64) - np.asarray(base_correct, dtype=np.float64)
    if len(diff) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            diff[rng.integers(0, len(diff), size=(100, len(diff)))].mean(axis=1)
            for _ in range(n_boot // 100)
        ]
    )
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def _predict(model: Any, calibration: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(argmax predictions, calibrated probabilities): what the API's Predictor returns."""
    from paperops.uncertainty.calibrate import softmax
    from paperops.uncertainty.calibration import finite_logits

    logits = finite_logits(model.logits(texts))
    probs = calibration.apply(logits)[0] if calibration is not None else softmax(logits)
    return probs.argmax(axis=1), probs


def shift_table(
    model: Any, calibration: Any, pairs: list[Pair], y: np.ndarray, seed: int
) -> dict[str, Any]:
    """Every shift's scores, with ratio/delta against the clean accuracy."""
    k = len(model.labels)
    rows: dict[str, Any] = {}
    clean_pred = None
    for name in SHIFTS:
        t0 = time.perf_counter()
        pred, probs = _predict(model, calibration, apply_shift(name, pairs, seed))
        rows[name] = score(y, pred, probs, k, clean_pred) | {"seconds": time.perf_counter() - t0}
        if name == "clean":
            clean_pred = pred
        rows[name]["accuracy_delta_ci95"] = paired_delta_ci(clean_pred == y, pred == y, seed)
        acc, base = rows[name]["accuracy"], rows["clean"]["accuracy"]
        rows[name] |= {
            "accuracy_ratio": acc / base if acc is not None and base else None,
            "accuracy_delta": acc - base if acc is not None and base is not None else None,
        }
        print(f"  {name}: {json.dumps({k_: rows[name][k_] for k_ in ('n', 'accuracy')})}")
    return rows


# ---- run ---------------------------------------------------------------------------------------

SCALES = {
    # test_cap: tfidf test papers (None = all); sample: embedding sample; train_cap: time-split
    # training rows (None = all, same size for both splits by construction)
    "full": {"test_cap": None, "sample": 1000, "train_cap": None},
    "quick": {"test_cap": 400, "sample": 60, "train_cap": 3000},
}


def _load_pool(processed: Path) -> Any:
    import pandas as pd

    frames = []
    for split in ("train", "val", "calibration", "test"):
        path = processed / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `dvc repro prepare` (or `make demo`), or point "
                "PAPEROPS_PROCESSED at a prepared data directory"
            )
        frames.append(pd.read_parquet(path).assign(split=split))
    return pd.concat(frames, ignore_index=True)


def _bundle(env: str, default: Path, override: Path | None) -> Path | None:
    if override is not None:
        return override
    value = os.environ.get(env)
    if value == "":
        return None
    return Path(value) if value else default


def period_slices(
    model: Any, calibration: Any, test: Any, labels: list[str], seed: int
) -> dict[str, Any]:
    """Clean accuracy on the oldest 20%, middle 60% and newest 20% (by submission month)."""
    months = np.array(
        [submission_month(i, u) for i, u in zip(test["id"], test["update_date"], strict=True)]
    )
    order = np.lexsort((test["id"].to_numpy(), months))
    q = len(order) // 5
    cuts = {
        "oldest 20%": order[:q],
        "middle 60%": order[q : len(order) - q],
        "newest 20%": order[len(order) - q :],
    }
    y = test["label"].map(labels.index).to_numpy()
    texts = apply_shift("clean", list(zip(test["title"], test["abstract"], strict=True)), seed)
    pred, probs = _predict(model, calibration, texts)
    out = {}
    for name, idx in cuts.items():
        out[name] = score(y[idx], pred[idx], probs[idx], len(labels)) | {
            "months": [min(months[idx].tolist()), max(months[idx].tolist())]
        }
    return out


def time_split_study(
    bundle_model: Any,
    pool: Any,
    labels: list[str],
    train_cap: int | None,
    seed: int,
    *,
    fractions: dict[str, float] | None = None,
    bundle_matches_data: bool = True,
) -> dict[str, Any]:
    """Stratified vs time split, same sizes: how much accuracy is lost when the future is unseen.

    The time model is retrained with the bundle's own config on the oldest 70% (by update_date,
    exactly what `data.split=time` assigns). Both models are then scored on the papers that are
    unseen by both: stratified-test papers inside the time split's newest-10% window.
    """
    from paperops.data.datamodule import stratified_cap
    from paperops.data.splits import time_split
    from paperops.data.text import model_text
    from paperops.models.tfidf import TfidfClassifier, TfidfConfig

    fractions = fractions or {"train": 0.7, "val": 0.1, "calibration": 0.1, "test": 0.1}
    pool = pool.assign(time_split=time_split(pool, fractions))
    k = len(labels)

    def texts(frame: Any) -> list[str]:
        return [model_text(t, a) for t, a in zip(frame["title"], frame["abstract"], strict=True)]

    def ys(frame: Any) -> np.ndarray:
        return frame["label"].map(labels.index).to_numpy()

    strat_train = pool[pool["split"] == "train"]
    time_train = pool[pool["time_split"] == "train"].reset_index(drop=True)
    t0 = time.perf_counter()
    if train_cap is not None:  # quick mode: both models retrained on equal-size caps
        strat_train = stratified_cap(strat_train.reset_index(drop=True), train_cap, seed)
        time_train = time_train.sort_values(["update_date", "id"]).iloc[: len(strat_train)]
        strat_model = TfidfClassifier(labels, TfidfConfig(**_config(bundle_model)))
        strat_model.fit(texts(strat_train), strat_train["label"])
    elif bundle_matches_data:  # the bundle is the stratified-train model: same data, config
        strat_model = bundle_model
    else:  # trained on other data: retrain so both sides see the same pool
        strat_model = TfidfClassifier(labels, TfidfConfig(**_config(bundle_model)))
        strat_model.fit(texts(strat_train), strat_train["label"])
    time_model = TfidfClassifier(labels, TfidfConfig(**_config(bundle_model)))
    time_model.fit(texts(time_train), time_train["label"])
    train_seconds = time.perf_counter() - t0

    strat_test = pool[pool["split"] == "test"]
    time_test = pool[pool["time_split"] == "test"]
    both = pool[(pool["split"] == "test") & (pool["time_split"] == "test")]
    out: dict[str, Any] = {
        "train_rows": {"stratified": len(strat_train), "time": len(time_train)},
        "time_test_window": [
            str(time_test["update_date"].min()),
            str(time_test["update_date"].max()),
        ],
        "time_train_window": [
            str(time_train["update_date"].min()),
            str(time_train["update_date"].max()),
        ],
        "retrain_seconds": train_seconds,
    }

    def acc(model: Any, frame: Any) -> dict[str, Any]:
        if frame.empty:
            return score(np.zeros(0, dtype=int), np.zeros(0, dtype=int), None, k)
        pred = np.argmax(model.logits(texts(frame)), axis=1)
        return score(ys(frame), pred, None, k)

    out["stratified_on_stratified_test"] = acc(strat_model, strat_test)
    out["time_on_time_test"] = acc(time_model, time_test)
    out["stratified_on_shared"] = acc(strat_model, both)
    out["time_on_shared"] = acc(time_model, both)
    if not both.empty:  # paired: the same unseen papers under both models
        y = ys(both)
        right_s = np.argmax(strat_model.logits(texts(both)), axis=1) == y
        right_t = np.argmax(time_model.logits(texts(both)), axis=1) == y
        out["shared_delta_ci95"] = paired_delta_ci(right_s, right_t, seed)
    return out


def _config(model: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(model.config)


def run(
    *,
    scale: str | None = None,
    processed: Path | None = None,
    tfidf_dir: Path | None = None,
    embedding_dir: Path | None = None,
    write: bool = True,
    seed: int = 42,
) -> dict[str, Any]:
    """Measure every shift; write benchmarks/results/robustness.json unless `write` is False."""
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _run(scale, processed, tfidf_dir, embedding_dir, write, seed)
    finally:  # a caller (the unit test's process) keeps its own thread count
        torch.set_num_threads(threads_before)


def _run(
    scale: str | None,
    processed: Path | None,
    tfidf_dir: Path | None,
    embedding_dir: Path | None,
    write: bool,
    seed: int,
) -> dict[str, Any]:
    import torch

    from paperops.data.datamodule import data_hash, read_labels, stratified_cap
    from paperops.models.base import CALIBRATION_FILE, load_classifier
    from paperops.models.embedding import EmbeddingClassifier
    from paperops.uncertainty.calibration import Calibration

    t_start = time.perf_counter()
    scale = scale or os.environ.get("PAPEROPS_BENCH_SCALE") or "full"
    if scale not in SCALES:
        raise ValueError(f"PAPEROPS_BENCH_SCALE must be one of {sorted(SCALES)}, got {scale!r}")
    caps = SCALES[scale]
    threads = int(os.environ.get("PAPEROPS_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    processed = processed or Path(os.environ.get("PAPEROPS_PROCESSED", REPO / "data/processed"))
    tfidf_dir = _bundle("PAPEROPS_BENCH_TFIDF", REPO / "models/tfidf", tfidf_dir)
    emb_dir = _bundle("PAPEROPS_BENCH_EMBEDDING", REPO / "models/demo_embedding", embedding_dir)
    cache = Path(os.environ.get("PAPEROPS_EMBED_CACHE", REPO / "data/cache/embeddings"))
    labels, labels_meta = read_labels(processed)
    label_level = labels_meta.get("label_level", "?")
    pool = _load_pool(processed)
    test = pool[pool["split"] == "test"].reset_index(drop=True)
    if caps["test_cap"] is not None:
        test = stratified_cap(test, caps["test_cap"], seed)
    sample = stratified_cap(test, caps["sample"], seed)
    print(f"robustness: scale={scale}, test={len(test)}, sample={len(sample)}", flush=True)

    def calibration_of(directory: Path) -> Any:
        path = directory / CALIBRATION_FILE
        return Calibration.load(path) if path.is_file() else None

    def pairs_y(frame: Any) -> tuple[list[Pair], np.ndarray]:
        pairs = list(zip(frame["title"], frame["abstract"], strict=True))
        return pairs, frame["label"].map(labels.index).to_numpy()

    if tfidf_dir is None or not (tfidf_dir / "model.json").is_file():
        raise FileNotFoundError(
            f"tfidf bundle {tfidf_dir} not found: train it with `paperops train experiment=tfidf "
            "train.output_dir=models/tfidf` or set PAPEROPS_BENCH_TFIDF"
        )
    tfidf = load_classifier(tfidf_dir, expected_labels=labels)
    # Was the bundle trained on exactly this data? (its training.json records the data hash)
    trained_on = _training_info(tfidf_dir).get("data_hash")
    tfidf_matches = trained_on is not None and trained_on == data_hash(processed)
    tfidf_cal = calibration_of(tfidf_dir)
    models: dict[str, Any] = {}
    print("tfidf, whole test split:", flush=True)
    models["tfidf"] = {
        "bundle": _rel(tfidf_dir),
        "trained_on_this_data": tfidf_matches,
        "calibrated": tfidf_cal is not None,
        "test": "whole test split" if caps["test_cap"] is None else f"capped at {len(test)}",
        "shifts": shift_table(tfidf, tfidf_cal, *pairs_y(test), seed),
    }
    print("tfidf, embedding sample:", flush=True)
    models["tfidf_sample"] = {
        "bundle": _rel(tfidf_dir),
        "calibrated": tfidf_cal is not None,
        "test": f"stratified sample of {len(sample)} (seed {seed})",
        "shifts": shift_table(tfidf, tfidf_cal, *pairs_y(sample), seed),
    }
    if emb_dir is not None and (emb_dir / "model.json").is_file():
        print("embedding, sample:", flush=True)
        emb = EmbeddingClassifier.load(emb_dir, expected_labels=labels, cache_dir=cache)
        emb_cal = calibration_of(emb_dir)
        emb_meta = json.loads((emb_dir / "model.json").read_text())
        models["embedding"] = {
            "bundle": _rel(emb_dir),
            "calibrated": emb_cal is not None,
            "test": f"stratified sample of {len(sample)} (seed {seed})",
            "max_seq_length": emb_meta["config"].get("max_seq_length"),
            "train_rows": _train_rows(emb_dir),
            "shifts": shift_table(emb, emb_cal, *pairs_y(sample), seed),
        }
    print("period slices + time split:", flush=True)
    period = period_slices(tfidf, tfidf_cal, test, labels, seed)
    time_study = time_split_study(
        tfidf,
        pool,
        labels,
        caps["train_cap"],
        seed,
        fractions=labels_meta.get("fractions"),
        bundle_matches_data=tfidf_matches,
    )
    result = {
        "label_level": label_level,
        "scale": scale,
        "seed": seed,
        "measured": time.strftime("%Y-%m-%d"),
        "device": f"{os.cpu_count()} CPU cores, {threads} torch thread(s)",
        "threads": threads,
        "test_size": len(test),
        "sample_size": len(sample),
        "shift_descriptions": {k: v[0] for k, v in SHIFTS.items()},
        "models": models,
        "period_slices": period,
        "time_split": time_study,
        "seconds": time.perf_counter() - t_start,
    }
    if write:
        write_result("robustness", result)
    return result


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _training_info(bundle: Path) -> dict[str, Any]:
    path = bundle / "training.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _train_rows(bundle: Path) -> int | None:
    return _training_info(bundle).get("rows", {}).get("train")


# ---- markdown ----------------------------------------------------------------------------------

MODEL_TITLES = {
    "tfidf": "tfidf (whole test split)",
    "tfidf_sample": "tfidf (embedding's sample)",
    "embedding": "embedding (sample)",
}


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    shifts = list(r["shift_descriptions"])
    lines = [
        "## Robustness under shift (`benchmarks/robustness.py`)",
        "",
        f"Accuracy of the trained classifiers when the held-out test papers ({r['label_level']} "
        f"level) are perturbed, next to the clean score (scale `{r['scale']}`, run on "
        f"{r['device']}, measured {r.get('measured', '?')}, {r['seconds'] / 60:.1f} min). "
        f"tfidf is scored on {r['test_size']:,} test papers; the embedding model (MiniLM "
        "encoder, slow on a CPU, every shifted text re-encoded) on a seeded stratified sample of "
        f"{r['sample_size']:,} of them, on which tfidf is scored too for a like-for-like row. "
        "Probabilities are the bundles' calibrated ones (temperature fitted on the clean "
        'calibration split); ECE is top-label, 15 bins. "changed" = share of papers whose '
        "predicted class differs from the clean prediction. Shifts:",
        "",
        *(f"- `{k}`: {v}" for k, v in r["shift_descriptions"].items()),
        "- period: the clean test split cut into its oldest 20%, middle 60% and newest 20% by "
        "submission month (from the arXiv id), and a tfidf model retrained on a time split "
        "(below).",
        "",
        "Notes:",
        "",
        *_notes(r),
        "Accuracy (ratio to clean):",
        "",
        "| model | n | " + " | ".join(shifts) + " |",
        "|---|---:|" + "---:|" * len(shifts),
    ]
    for name, m in r["models"].items():
        s = m["shifts"]
        cells = [_f(s["clean"]["accuracy"])] + [
            f"{_f(s[k]['accuracy'])} ({_f(s[k]['accuracy_ratio'], 2)}x)" for k in shifts[1:]
        ]
        lines.append(
            f"| {MODEL_TITLES.get(name, name)} | {s['clean']['n']:,} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Macro-F1 / mean confidence / ECE / changed predictions per shift:",
        "",
        "| model | shift | accuracy | Δ accuracy [95% CI] | macro-F1 | mean confidence | ECE "
        "| changed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in r["models"].items():
        for k in shifts:
            x = m["shifts"][k]
            delta = (
                "–" if k == "clean" else _delta(x["accuracy_delta"], x.get("accuracy_delta_ci95"))
            )
            lines.append(
                f"| {MODEL_TITLES.get(name, name)} | {k} | {_f(x['accuracy'])} | {delta} "
                f"| {_f(x['macro_f1'])} "
                f"| {_f(x.get('mean_confidence'))} | {_f(x.get('ece'))} | {_f(x.get('changed'))} |"
            )
    p = r["period_slices"]
    lines += [
        "",
        "Period, tfidf on the clean test split by submission month (stratified split, so every "
        "period is also in training; the slices also differ in class mix, so their gap is not "
        "age alone):",
        "",
        "| slice | months | n | accuracy | macro-F1 | mean confidence | ECE |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(
            f"| {k} | {v['months'][0]} – {v['months'][1]} | {v['n']:,} | {_f(v['accuracy'])} "
            f"| {_f(v['macro_f1'])} | {_f(v.get('mean_confidence'))} | {_f(v.get('ece'))} |"
            for k, v in p.items()
        ),
    ]
    t = r["time_split"]
    shared_s, shared_t = t["stratified_on_shared"], t["time_on_shared"]
    lines += [
        "",
        "Period, tfidf trained on a time split (`data.split=time`: the oldest 70% of papers by "
        f"update_date, {t['time_train_window'][0]} – {t['time_train_window'][1]}, train; the "
        f"newest 10%, {t['time_test_window'][0]} – {t['time_test_window'][1]}, test) vs the "
        'stratified split, same config and training size. "shared" = the stratified test '
        "papers inside the newest-10% window: unseen by both models, so the gap there is what "
        "not having seen the period costs.",
        "",
        "| model | train papers | test set | n | accuracy | macro-F1 |",
        "|---|---:|---|---:|---:|---:|",
        f"| stratified | {t['train_rows']['stratified']:,} | stratified test "
        f"| {t['stratified_on_stratified_test']['n']:,} "
        f"| {_f(t['stratified_on_stratified_test']['accuracy'])} "
        f"| {_f(t['stratified_on_stratified_test']['macro_f1'])} |",
        f"| time | {t['train_rows']['time']:,} | time test (newest 10%) "
        f"| {t['time_on_time_test']['n']:,} | {_f(t['time_on_time_test']['accuracy'])} "
        f"| {_f(t['time_on_time_test']['macro_f1'])} |",
        f"| stratified | {t['train_rows']['stratified']:,} | shared | {shared_s['n']:,} "
        f"| {_f(shared_s['accuracy'])} | {_f(shared_s['macro_f1'])} |",
        f"| time | {t['train_rows']['time']:,} | shared | {shared_t['n']:,} "
        f"| {_f(shared_t['accuracy'])} | {_f(shared_t['macro_f1'])} |",
        "",
        _drop_sentence(shared_s["accuracy"], shared_t["accuracy"], t.get("shared_delta_ci95")),
        "",
    ]
    return "\n".join(lines)


def _delta(delta: float | None, ci: list[float] | None) -> str:
    if delta is None:
        return "–"
    return f"{delta:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def _drop_sentence(stratified: float | None, time_: float | None, ci: list[float] | None) -> str:
    if stratified is None or time_ is None or not stratified:
        return "No stratified-test paper falls in the time split's test window: no shared score."
    interval = f"; paired-bootstrap 95% CI of the change {_delta(time_ - stratified, ci)}"
    return (
        f"Accuracy lost when the period is unseen (shared papers): {stratified - time_:.3f} "
        f"({stratified:.3f} -> {time_:.3f}, {time_ / stratified:.2f}x{interval if ci else ''})."
    )


def _notes(r: dict[str, Any]) -> list[str]:
    """What the numbers can and cannot say: bundles, sample sizes, intervals, API limits."""
    tf = r["models"]["tfidf"]
    same = tf.get("trained_on_this_data")
    notes = [
        f"- tfidf bundle `{tf.get('bundle', '?')}`, "
        + (
            "trained on exactly this data (same data hash): the demo's model on the dev file, "
            "not the quality section's (both files, capped per class)."
            if same
            else "trained on other data than this split (data hash differs)."
        ),
    ]
    emb = r["models"].get("embedding")
    if emb:
        rows = emb.get("train_rows")
        notes.append(
            f"- embedding bundle `{emb.get('bundle', '?')}`"
            + (f", trained on {rows:,} papers" if rows else "")
            + (
                f", {emb['max_seq_length']}-token window (text beyond it is cut, so the "
                "abstract cuts remove less of what it sees than of what tfidf sees)"
                if emb.get("max_seq_length")
                else ""
            )
            + ". It is not the quality section's embedding model, so compare it with the "
            "tfidf row on the same sample, not across sections."
        )
    notes += [
        "- Δ accuracy has a 95% paired-bootstrap interval (1,000 resamples of the same papers): "
        f"on the {r['sample_size']:,}-paper sample only changes beyond roughly ±0.01-0.02 are "
        "resolved.",
        '- `title_only` measures the models themselves (`model_text(title, "")`); the HTTP '
        "API rejects a blank abstract, so a client with only a title must send a placeholder.",
        "- `update_date` (what `data.split=time` sorts by) is the latest revision, not the "
        "submission: old papers revised recently fall in the newer windows of the time split.",
        "",
    ]
    return notes
