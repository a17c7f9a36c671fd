"""Raw arXiv records -> clean, labelled, de-duplicated, split data.

Outputs: parquet per split + labels.json + stats.json + data card.

Order matters and is deliberate: validate raw rows, clean, label, length bounds, dedupe (by id, then
by normalised text), drop rare classes, and only then split, so a duplicate can never straddle
train and test and class counts are counts of unique papers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperops.data import taxonomy
from paperops.data.card import render_card
from paperops.data.errors import DataError
from paperops.data.schemas import raw_schema
from paperops.data.sources import OnError, ReadReport, read_arxiv_frame
from paperops.data.text import clean_whitespace, dedupe_key
from paperops.data.validate import SPLITS, schema_violations
from paperops.io import atomic_dir

log = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    raw_path: Path
    output_dir: Path
    label_level: str = "archive"
    min_count: int = 50
    split: str = "stratified"
    fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.1, "calibration": 0.1, "test": 0.1}
    )
    seed: int = 42
    on_error: OnError = "raise"
    limits: dict[str, int] = field(
        default_factory=lambda: {
            "title_min_chars": 5,
            "title_max_chars": 500,
            "abstract_min_chars": 40,
            "abstract_max_chars": 6000,
        }
    )
    max_examples: int = 5

    @classmethod
    def from_config(cls, data: Any, **overrides: Any) -> PrepareConfig:
        """Build from the Hydra `data` group (the one mapping from config to arguments)."""
        kwargs = dict(
            raw_path=Path(data.raw_path),
            output_dir=Path(data.output_dir),
            label_level=data.label_level,
            min_count=data.min_count,
            split=data.split,
            fractions=dict(data.fractions),
            seed=data.seed,
            on_error=data.on_error,
            limits=dict(data.limits),
            max_examples=data.validation.max_examples,
        )
        return cls(**{**kwargs, **overrides})

    def __post_init__(self) -> None:
        self.raw_path, self.output_dir = Path(self.raw_path), Path(self.output_dir)
        if self.label_level not in taxonomy.LABEL_LEVELS:
            raise ValueError(
                f"label_level must be one of {list(taxonomy.LABEL_LEVELS)}, "
                f"got {self.label_level!r}"
            )
        if self.split not in ("stratified", "time"):
            raise ValueError(f"split must be 'stratified' or 'time', got {self.split!r}")
        if set(self.fractions) != set(SPLITS):
            raise ValueError(
                f"fractions must have exactly the keys {list(SPLITS)}, got {sorted(self.fractions)}"
            )
        fracs = self.fractions.values()
        if any(f <= 0 for f in fracs) or abs(sum(fracs) - 1) > 1e-6:
            raise ValueError(f"fractions must be positive and sum to 1, got {dict(self.fractions)}")
        if self.min_count < len(SPLITS):
            raise ValueError(
                f"min_count must be >= {len(SPLITS)} so every split can hold every "
                f"class, got {self.min_count}"
            )


@dataclass
class PrepareResult:
    output_dir: Path
    counts: dict[str, int]
    labels: list[str]
    dropped: dict[str, int]
    seconds: float


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Run the whole preparation and write its outputs atomically (all or nothing)."""
    t0 = time.perf_counter()
    report = ReadReport(str(cfg.raw_path), max_examples=cfg.max_examples)
    df = read_arxiv_frame(cfg.raw_path, on_error=cfg.on_error, report=report)
    n_read = len(df)
    log.info("read %d records from %s (%d lines skipped)", n_read, cfg.raw_path, report.n_skipped)
    dropped: Counter[str] = Counter(report.skipped)
    examples: dict[str, list[str]] = {k: list(v) for k, v in report.examples.items()}

    violations, bad = schema_violations(df, raw_schema(), "raw", cfg.max_examples)
    if violations:
        if cfg.on_error == "raise":
            detail = "\n".join(
                f"  [{v.rule}] {v.where}: {v.message} ({v.count} rows), e.g. "
                + "; ".join(f"{cfg.raw_path} {ex}" for ex in v.examples[:3])
                for v in violations
            )
            raise DataError(
                f"raw data violates {len(violations)} rule(s) "
                f"(use --on-error skip to drop these rows):\n{detail}",
                path=cfg.raw_path,
                rule="raw_schema",
            )
        by_rule = Counter(bad.values())  # each dropped row counted once, under its first rule
        dropped.update(by_rule)
        for v in violations:
            if by_rule[v.rule]:
                examples.setdefault(v.rule, []).extend(v.examples)
        df = df.drop(index=list(bad))

    df["title"] = clean_whitespace(df["title"])
    df["abstract"] = clean_whitespace(df["abstract"])
    df["primary_category"] = df["primary"].map(taxonomy.canonical)
    df = df.drop(columns="primary")
    if cfg.label_level == "category":
        # An archive-level code (e.g. "cond-mat" alone) says nothing about the sub-category.
        coarse = df["primary_category"].map(lambda c: taxonomy.lookup(c).coarse).astype(bool)
        dropped["coarse_label_at_category_level"] = int(coarse.sum())
        df = df[~coarse]
    df["label"] = df["primary_category"].map(lambda c: taxonomy.label_for(c, cfg.label_level))

    lim = cfg.limits
    for col in ("title", "abstract"):
        n = df[col].str.len()
        short, long_ = n < lim[f"{col}_min_chars"], n > lim[f"{col}_max_chars"]
        dropped[f"{col}_too_short"] += int(short.sum())
        dropped[f"{col}_too_long"] += int(long_.sum())
        df = df[~(short | long_)]

    # Dedupe: the kept copy must not depend on file order. Per id keep the newest version (ties
    # broken by content, `line` last); among equal texts keep the smallest id.
    df = df.sort_values(
        ["id", "update_date", "title", "abstract", "categories", "line"],
        ascending=[True, False, True, True, True, True],
        kind="stable",
    )
    dup_id = df["id"].duplicated(keep="first")
    dropped["duplicate_id"] += int(dup_id.sum())
    df = df[~dup_id]
    dup_text = dedupe_key(df["title"], df["abstract"]).duplicated(keep="first")
    dropped["duplicate_text"] += int(dup_text.sum())
    df = df[~dup_text]

    class_counts = df["label"].value_counts()
    rare = class_counts[class_counts < cfg.min_count]
    dropped["rare_class"] += int(rare.sum())
    df = df[~df["label"].isin(rare.index)].reset_index(drop=True)
    if df.empty:
        raise DataError(
            f"no rows left after cleaning (min_count={cfg.min_count}); dropped: {dict(+dropped)}",
            path=cfg.raw_path,
            rule="non_empty_output",
        )

    df["split"] = (
        stratified_split(df["label"].to_numpy(), cfg.fractions, cfg.seed)
        if cfg.split == "stratified"
        else time_split(df, cfg.fractions)
    )
    labels = sorted(df["label"].unique())
    _write(cfg, df, labels, n_read, +dropped, examples, {k: int(v) for k, v in rare.items()})
    counts = {k: int(v) for k, v in df["split"].value_counts().items()}
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %s, %d labels, in %.1f s", cfg.output_dir, counts, len(labels), seconds)
    return PrepareResult(cfg.output_dir, counts, labels, dict(+dropped), seconds)


def _allocate(n: int, fractions: list[float]) -> list[int]:
    """Split n items by fractions (largest remainder), giving every split at least one item."""
    raw = np.array(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):  # take from the largest split for any empty one
        if counts[i] == 0 and counts.max() > 1:
            counts[counts.argmax()] -= 1
            counts[i] += 1
    return counts.tolist()


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Per-class seeded shuffle and cut. Each class gets its own RNG stream (seed, crc32(label)),
    so adding or removing one class does not reshuffle the others."""
    names = list(SPLITS)
    out = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng = np.random.default_rng([seed, zlib.crc32(str(label).encode())])
        idx = rng.permutation(idx)
        start = 0
        for name, k in zip(names, _allocate(len(idx), [fractions[n] for n in names]), strict=True):
            out[idx[start : start + k]] = name
            start += k
    return out


def time_split(df: pd.DataFrame, fractions: dict[str, float]) -> np.ndarray:
    """Oldest papers train, newest test: measures how a model ages. Ties broken by id."""
    order = np.lexsort((df["id"].to_numpy(), df["update_date"].to_numpy()))
    out = np.empty(len(df), dtype=object)
    start = 0
    for name, k in zip(SPLITS, _allocate(len(df), [fractions[n] for n in SPLITS]), strict=True):
        out[order[start : start + k]] = name
        start += k
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write(
    cfg: PrepareConfig,
    df: pd.DataFrame,
    labels: list[str],
    n_read: int,
    dropped: dict[str, int],
    examples: dict[str, list[str]],
    rare: dict[str, int],
) -> None:
    columns = [
        "id",
        "title",
        "abstract",
        "label",
        "primary_category",
        "categories",
        "update_date",
        "line",
    ]
    per_split = {s: df.loc[df["split"] == s, "label"].value_counts().to_dict() for s in SPLITS}
    meta: dict[str, Any] = {
        "label_level": cfg.label_level,
        "split": cfg.split,
        "seed": cfg.seed,
        "fractions": dict(cfg.fractions),
        "min_count": cfg.min_count,
        "raw_path": str(cfg.raw_path),
        "raw_sha256": file_sha256(cfg.raw_path),
        "labels": [
            {
                "index": i,
                "label": lab,
                "name": taxonomy.display_name(lab),
                "count": int(sum(per_split[s].get(lab, 0) for s in SPLITS)),
            }
            for i, lab in enumerate(labels)
        ],
    }
    stats = {
        "rows_read": n_read,
        "rows_out": len(df),
        "dropped": dropped,
        "dropped_examples": examples,
        "rare_classes": rare,
        "per_split": {s: {lab: int(per_split[s].get(lab, 0)) for lab in labels} for s in SPLITS},
    }
    with atomic_dir(cfg.output_dir) as tmp:
        for s in SPLITS:
            part = df.loc[df["split"] == s, columns].reset_index(drop=True)
            part.to_parquet(tmp / f"{s}.parquet", index=False)
        (tmp / "labels.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / "data_card.md").write_text(render_card(meta, stats))
