"""Cross-list suggestions (issue 19): the suggested set of fine categories vs the listed set.

Data: the quality benchmark's files and category-level datasets (`benchmarks.quality`: both
files, PAPEROPS_BENCH_CAP papers per primary category, default 8,000), two splits:
- `stratified`: the quality benchmark's `category` block (papers like the training papers);
- `source`: the same category level with the quality benchmark's held-out listings as the test.
Per split: `paperops train experiment=category` as shipped: its tfidf model gives the primary
and its bundle holds the head (`paperops.models.multilabel`, fitted on the reliable rows). The
precision target is chosen on the validation split (sample-F1) among PRECISIONS, then the test
split is scored once. Only rows whose full category list is reliable are scored
(`paperops.data.crosslists`), over the fine categories that >= 50 reliable papers of the dataset
list; the same figures over every listed category, and for the primary alone, are beside them.

Resumable: the prepared data and the bundle are kept under PAPEROPS_CROSSLISTS_WORK (default
data/cache/crosslists) and reused while the data hash matches.
PAPEROPS_BENCH_SPLITS=stratified runs one split. The serving cost (`throughput_ratio`: with /
without cross_lists=true at 32 clients, one server) is measured on the stratified bundle by
`benchmarks/crosslists_serve.py` after that split (alone: `python -m benchmarks.crosslists_serve`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, RESULTS, run_stamp, write_result
from benchmarks.crosslists_report import markdown
from benchmarks.quality import DATASETS as QUALITY_DATASETS
from benchmarks.quality import RAW

__all__ = ["markdown", "run"]

DATASETS = {
    "stratified": QUALITY_DATASETS["category"],
    "source": ["data.label_level=category", *QUALITY_DATASETS["source"][1:]],
}
WORK = Path(os.environ.get("PAPEROPS_CROSSLISTS_WORK", str(REPO / "data" / "cache" / "crosslists")))
PRECISIONS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_PAPERS = 50  # the "fine categories with >= 50 papers"


def _prepare(name: str, raw: list[str], cap: int) -> Path:
    """The category-level dataset, reused when prepared with the same settings."""
    from paperops.config import load_config
    from paperops.data.prepare import PrepareConfig, prepare

    out = WORK / name / "processed"
    overrides = [*DATASETS[name], "data.raw_paths=[" + ",".join(raw) + "]",
                 f"data.output_dir={out}", f"data.max_per_class={cap}"]  # fmt: skip
    stamp = WORK / name / "prepared-with.json"
    fresh = stamp.is_file() and json.loads(stamp.read_text()) == overrides
    if fresh and (out / "labels.json").is_file():
        return out
    result = prepare(PrepareConfig.from_config(load_config(overrides).data))
    stamp.write_text(json.dumps(overrides))
    print(f"{name}: prepared {result.counts} in {result.seconds:.0f} s", flush=True)
    return out


def _bundle(processed: Path, digest: str) -> tuple[Path, dict[str, Any], bool]:
    """The shipped category model (`experiment=category`: tfidf + the cross-list head in its
    bundle) trained on this dataset; reused while the data and the model settings match."""
    from omegaconf import OmegaConf

    from paperops.config import load_config
    from paperops.models.base import training_info
    from paperops.train import train

    out = processed.parent / "bundle"
    cfg = load_config(["experiment=category", f"train.processed_dir={processed}",
                       f"train.output_dir={out}", "train.track=false", "seed=42",
                       f"paths.work={processed.parent / 'work'}"])  # fmt: skip
    wanted = (
        digest,
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(cfg.train.cross_lists, resolve=True),
    )
    if (out / "training.json").is_file():
        info = training_info(out)
        if (
            info.get("data_hash"),
            info["config"]["model"],
            info["config"]["train"].get("cross_lists"),
        ) == wanted:
            return out, info, True
    assert train(cfg) is not None
    return out, training_info(out), False


def _block(name: str, raw: list[str], cap: int) -> dict[str, Any]:
    import numpy as np

    from paperops.data.crosslists import frequent_labels, unreliable_sources
    from paperops.data.datamodule import data_hash, load_splits_for_model, read_labels
    from paperops.models.base import load_classifier
    from paperops.models.multilabel import Suggestion, describe
    from paperops.models.multilabel_io import HEAD_DIR, load_cross_lists
    from paperops.train.crosslists import reliable_part, set_metrics

    t0 = time.perf_counter()
    processed = _prepare(name, raw, cap)
    digest = data_hash(processed)
    bundle, info, reused = _bundle(processed, digest)
    head = load_cross_lists(bundle)
    assert head is not None, f"{bundle} has no cross-list head"
    splits, labels = load_splits_for_model(processed)
    bad = unreliable_sources(read_labels(processed)[1])
    parts, excluded = {}, {}
    for s, split in splits.items():
        parts[s], excluded[s] = reliable_part(split, bad)
    every = [x for s in parts.values() for x in s[1]]
    keep = set(frequent_labels(every, MIN_PAPERS))
    model = load_classifier(bundle, expected_labels=labels)
    timing: dict[str, float] = {}
    probs, prim = {}, {}
    for s in ("val", "calibration", "test"):
        texts = parts[s][0]
        t = time.perf_counter()
        prim[s] = [labels[i] for i in model.logits(texts).argmax(axis=1)]
        timing[f"primary_{s}"] = time.perf_counter() - t
        t = time.perf_counter()
        probs[s] = head.predict_proba(texts)
        timing[f"head_{s}"] = time.perf_counter() - t
    sweep = {}
    for p in PRECISIONS:  # thresholds on calibration, judged on validation
        head.set_thresholds(probs["calibration"], parts["calibration"][1], p, prim["calibration"])
        sug = head.suggest_from_proba(probs["val"], prim["val"])
        sweep[p] = set_metrics(sug, parts["val"][1], prim["val"], keep)
    chosen = max(PRECISIONS, key=lambda p: sweep[p]["sample_f1"])
    head.set_thresholds(probs["calibration"], parts["calibration"][1], chosen, prim["calibration"])
    t = time.perf_counter()
    sug = head.suggest_from_proba(probs["test"], prim["test"])
    timing["suggest_test"] = time.perf_counter() - t
    listed = parts["test"][1]
    alone = [[Suggestion(p, None, *describe(p))] for p in prim["test"]]
    per_label = {}  # realised precision of each label's suggestions beyond the primary
    extra: dict[str, list[bool]] = {}
    for s, lst, p in zip(sug, listed, prim["test"], strict=True):
        for x in s:
            if x.label != p:
                extra.setdefault(x.label, []).append(x.label in lst)
    for lab, hits in sorted(extra.items()):
        if len(hits) >= 20:
            per_label[lab] = {"suggested": len(hits), "precision": float(np.mean(hits))}
    n_test = len(parts["test"][0])
    return {
        **set_metrics(sug, listed, prim["test"], keep),
        "all_listed": set_metrics(sug, listed, prim["test"]),
        "primary_only": set_metrics(alone, listed, prim["test"], keep),
        "primary_accuracy": float(
            np.mean([p == s[0] for p, s in zip(prim["test"], listed, strict=True)])
        ),
        "precision_target": chosen,
        "val_sweep": {str(p): sweep[p] for p in PRECISIONS},
        "labels_meeting_target": sum(v["precision"] >= chosen for v in per_label.values()),
        "labels_judged": len(per_label),
        "per_label_precision": per_label,
        "test_size": n_test,
        "test_rows_excluded": excluded["test"],
        "rows": {s: len(v[0]) for s, v in parts.items()},
        "n_eval_labels": len(keep),
        "n_head_labels": len(head.labels),
        "head_fit_seconds": info["cross_lists"]["seconds"],
        "primary_train_seconds": info["train_seconds"],
        "head_ms_per_paper": 1000 * timing["head_test"] / n_test,
        "primary_ms_per_paper": 1000 * timing["primary_test"] / n_test,
        "suggest_ms_per_paper": 1000 * timing["suggest_test"] / n_test,
        "shared": _shared_cost(model, head, parts["test"][0]) if head.shared else None,
        "head_mb": round(sum(f.stat().st_size for f in (bundle / HEAD_DIR).iterdir()) / 2**20, 1),
        "holdout_sources": read_labels(processed)[1].get("holdout_sources", []),
        "wall_seconds": round(time.perf_counter() - t0),
        "bundle_reused": reused,  # wall_seconds then leaves out preparing and training
    }


def _shared_cost(model: Any, head: Any, texts: list[str]) -> dict[str, float]:
    """ms a paper (batches of 32, as the micro-batcher sends) when the TF-IDF rows are computed
    once for the primary and the head: what serving with cross-lists adds to the model time."""
    vec, t = model.vectorizer, {"features": 0.0, "primary": 0.0, "head": 0.0}
    for i in range(0, len(texts), 32):
        t0 = time.perf_counter()
        x = vec.transform(texts[i : i + 32])
        t1 = time.perf_counter()
        model.logits_from_features(x)
        t2 = time.perf_counter()
        head.suggest_from_proba(head.predict_proba_features(x))
        t3 = time.perf_counter()
        t["features"], t["primary"], t["head"] = (
            t["features"] + t1 - t0, t["primary"] + t2 - t1, t["head"] + t3 - t2)  # fmt: skip
    ms = {k: 1000 * v / len(texts) for k, v in t.items()}
    return ms | {"model_time_ratio": (ms["features"] + ms["primary"] + ms["head"])
                 / (ms["features"] + ms["primary"])}  # fmt: skip


def run() -> dict[str, Any]:
    raw = [p for p in os.environ.get("PAPEROPS_BENCH_RAW", "").split(",") if p] or [
        str(p) for p in RAW
    ]
    cap = int(os.environ.get("PAPEROPS_BENCH_CAP", "8000"))
    only = [s for s in os.environ.get("PAPEROPS_BENCH_SPLITS", "").split(",") if s]
    path = REPO / "benchmarks" / "results" / "crosslists.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    splits = dict(previous.get("splits", {})) if only else {}
    serving = previous.get("serving")
    for name in DATASETS:
        if only and name not in only:
            continue
        splits[name] = _block(name, raw, cap)
        print(f"{name}: {json.dumps({k: splits[name][k] for k in HEADLINE})}", flush=True)
        write_result("crosslists", _summary(splits, raw, cap, serving))
        if name == "stratified":
            from benchmarks.crosslists_serve import measure

            print("stratified: serving with / without cross_lists ...", flush=True)
            serving = measure(WORK / name / "bundle", WORK / name / "processed")
    result = _summary(splits, raw, cap, serving)
    write_result("crosslists", result)
    return result


NOT_SERVED = "throughput_ratio (benchmarks/crosslists_serve.py did not run)"
HEADLINE = ("sample_f1", "micro_f1", "top_listed", "primary_in_set", "mean_set_size")


def _summary(
    splits: dict[str, Any], raw: list[str], cap: int, serving: dict[str, Any] | None
) -> dict[str, Any]:
    strat = splits.get("stratified", {})
    explain = RESULTS / "explain.json"  # issue 19's other half, measured by benchmarks/explain.py
    faith = json.loads(explain.read_text()) if explain.is_file() else {}
    return {
        **{k: strat.get(k) for k in HEADLINE},
        "test_size": strat.get("test_size"),
        "throughput_ratio": None if serving is None else serving["throughput_ratio"],
        "faithfulness_ratio": faith.get("faithfulness_ratio"),
        "faithfulness_from": f"benchmarks/results/explain.json ({faith.get('measured')}, "
        f"{faith.get('papers')} papers; see its section)"
        if faith
        else None,
        **({} if serving else {"not_measured": NOT_SERVED}),
        "serving": serving,
        **run_stamp(),
        "scale": f"cpu, cap {cap} papers per primary category",
        "raw_files": [Path(p).name for p in raw],
        "splits": splits,
    }
