"""Raw arXiv records (one or several files) -> clean, labelled, de-duplicated, split data.

Outputs: parquet per split + labels.json + stats.json + data card.

Order matters and is deliberate: validate raw rows, clean, label, length bounds, dedupe across
files (by id, then by normalised text), cap each class, drop rare classes, and only then split, so
a duplicate can never straddle train and test and class counts are counts of unique papers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from paperops.data import taxonomy
from paperops.data.errors import DataError
from paperops.data.outputs import write_prepared
from paperops.data.schemas import raw_schema
from paperops.data.sources import OnError, read_arxiv_files, resolve_raw_paths
from paperops.data.splits import (
    SPLIT_KINDS,
    SPLITS,
    cap_per_class,
    choose_holdout,
    source_split,
    stratified_split,
    time_split,
)
from paperops.data.text import clean_whitespace, dedupe_key
from paperops.data.validate import schema_violations

log = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    raw_paths: str | Path | list[str | Path]
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
    max_per_class: int | None = None
    holdout_sources: list[str] = field(default_factory=list)
    holdout_count: int = 3
    # Sources whose labels are archive-level only or reconstructed (PROVENANCE "label caveats"):
    # their rows train archive models but never become fine-level (category) labels.
    archive_only_sources: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, data: Any, **overrides: Any) -> PrepareConfig:
        """Build from the Hydra `data` group (the one mapping from config to arguments)."""
        kwargs = dict(
            raw_paths=_path_list(data.raw_paths),
            output_dir=Path(data.output_dir),
            label_level=data.label_level,
            min_count=data.min_count,
            split=data.split,
            fractions=dict(data.fractions),
            seed=data.seed,
            on_error=data.on_error,
            limits=dict(data.limits),
            max_examples=data.validation.max_examples,
            max_per_class=data.get("max_per_class"),
            holdout_sources=list(data.get("holdout_sources") or []),
            holdout_count=int(data.get("holdout_count", 3)),
            archive_only_sources=list(data.get("archive_only_sources") or []),
        )
        return cls(**{**kwargs, **overrides})

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.label_level not in taxonomy.LABEL_LEVELS:
            raise ValueError(
                f"label_level must be one of {list(taxonomy.LABEL_LEVELS)}, "
                f"got {self.label_level!r}"
            )
        if self.split not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {list(SPLIT_KINDS)}, got {self.split!r}")
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
        if self.max_per_class is not None and self.max_per_class < self.min_count:
            raise ValueError(
                f"max_per_class ({self.max_per_class}) must be >= min_count ({self.min_count}): "
                "a smaller cap would drop every class as rare"
            )


@dataclass
class PrepareResult:
    output_dir: Path
    counts: dict[str, int]
    labels: list[str]
    dropped: dict[str, int]
    seconds: float


def _path_list(value: Any) -> str | list[str]:
    """A config's `raw_paths` (a string or a list config) as plain Python."""
    return value if isinstance(value, str) else [str(v) for v in value]


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Run the whole preparation and write its outputs atomically (all or nothing)."""
    t0 = time.perf_counter()
    paths = resolve_raw_paths(cfg.raw_paths)
    df, reports = read_arxiv_files(paths, on_error=cfg.on_error, max_examples=cfg.max_examples)
    n_read = len(df)
    dropped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for path, report in zip(paths, reports, strict=True):
        log.info("read %d records from %s (%d lines skipped)", report.records, path,
                 report.n_skipped)  # fmt: skip
        dropped.update(report.skipped)
        for rule, exs in report.examples.items():
            examples.setdefault(rule, []).extend(exs)

    df["path"] = df["file"].map({i: p.name for i, p in enumerate(paths)})  # examples name files
    violations, bad = schema_violations(df, raw_schema(), "raw", cfg.max_examples)
    if violations:
        if cfg.on_error == "raise":
            detail = "\n".join(
                f"  [{v.rule}] {v.where}: {v.message} ({v.count} rows), e.g. "
                + "; ".join(v.examples[:3])
                for v in violations
            )
            raise DataError(
                f"raw data violates {len(violations)} rule(s) "
                f"(use --on-error skip to drop these rows):\n{detail}",
                path=paths[0] if len(paths) == 1 else ", ".join(map(str, paths)),
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
    df = _drop_conflicting_primaries(df, paths, cfg.on_error, dropped)
    if cfg.label_level == "category":
        # An archive-level code (e.g. "cond-mat" alone) says nothing about the sub-category, and
        # a source whose labels are archive-only or reconstructed (PROVENANCE) may not either.
        coarse = df["primary_category"].map(lambda c: taxonomy.lookup(c).coarse).astype(bool)
        dropped["coarse_label_at_category_level"] += int(coarse.sum())
        df = df[~coarse]
        only = df["source"].isin(cfg.archive_only_sources)
        dropped["archive_only_source"] += int(only.sum())
        df = df[~only]
    df["label"] = df["primary_category"].map(lambda c: taxonomy.label_for(c, cfg.label_level))

    lim = cfg.limits
    for col in ("title", "abstract"):
        n = df[col].str.len()
        short, long_ = n < lim[f"{col}_min_chars"], n > lim[f"{col}_max_chars"]
        dropped[f"{col}_too_short"] += int(short.sum())
        dropped[f"{col}_too_long"] += int(long_.sum())
        df = df[~(short | long_)]

    # Dedupe: the kept copy must not depend on row order. Per id keep the newest version (ties
    # broken by content, then file order, `line` last); among equal texts keep the smallest id.
    df = df.sort_values(
        ["id", "update_date", "title", "abstract", "categories", "file", "line"],
        ascending=[True, False, True, True, True, True, True],
        kind="stable",
    )
    dup_id = df["id"].duplicated(keep="first")
    dropped["duplicate_id"] += int(dup_id.sum())
    df = df[~dup_id]
    dup_text = dedupe_key(df["title"], df["abstract"]).duplicated(keep="first")
    dropped["duplicate_text"] += int(dup_text.sum())
    df = df[~dup_text].reset_index(drop=True)

    holdout: list[str] = []
    if cfg.split == "source":
        holdout = choose_holdout(
            df["source"].tolist(), cfg.holdout_sources, cfg.holdout_count, cfg.seed
        )
    held = df["source"].isin(holdout)
    if cfg.max_per_class is not None:  # held-out test rows are never capped: they are the test
        h = held.to_numpy()
        keep = h.copy()
        keep[~h] = cap_per_class(df.loc[~held, "label"], cfg.max_per_class, cfg.seed).to_numpy()
        dropped["class_cap"] += int((~keep).sum())
        df, held = df[keep], held[keep]

    # Rare classes are judged on the rows a model trains on (for split=source: the kept sources);
    # a held-out paper of a class the model never saw cannot be scored, so it is dropped too.
    class_counts = df.loc[~held, "label"].value_counts()
    rare = class_counts[class_counts < cfg.min_count]
    unseen = held & ~df["label"].isin(class_counts.index)
    dropped["rare_class"] += int(df["label"].isin(rare.index).sum())
    dropped["holdout_class_not_in_training"] += int(unseen.sum())
    df = df[~df["label"].isin(rare.index) & ~unseen].reset_index(drop=True)
    if df.empty or (cfg.split == "source" and not df["source"].isin(holdout).any()):
        raise DataError(
            f"no {'held-out ' if holdout else ''}rows left after cleaning "
            f"(min_count={cfg.min_count}); dropped: {dict(+dropped)}",
            path=", ".join(map(str, paths)),
            rule="non_empty_output",
        )

    if cfg.split == "stratified":
        df["split"] = stratified_split(df["label"].to_numpy(), cfg.fractions, cfg.seed)
    elif cfg.split == "time":
        df["split"] = time_split(df, cfg.fractions)
    else:
        df["split"] = source_split(df, holdout, cfg.fractions, cfg.seed)
    labels = sorted(df["label"].unique())
    meta = {
        "label_level": cfg.label_level,
        "split": cfg.split,
        "seed": cfg.seed,
        "fractions": dict(cfg.fractions),
        "min_count": cfg.min_count,
        "max_per_class": cfg.max_per_class,
        "holdout_sources": holdout,
        "archive_only_sources": list(cfg.archive_only_sources),
    }
    stats = {"rows_read": n_read, "dropped": +dropped, "dropped_examples": examples,
             "rare_classes": {k: int(v) for k, v in rare.items()}}  # fmt: skip
    write_prepared(cfg.output_dir, paths, df, labels, meta, stats)
    counts = {k: int(v) for k, v in df["split"].value_counts().items()}
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %s, %d labels, in %.1f s", cfg.output_dir, counts, len(labels), seconds)
    return PrepareResult(cfg.output_dir, counts, labels, dict(+dropped), seconds)


def _drop_conflicting_primaries(
    df: pd.DataFrame, paths: list[Path], on_error: OnError, dropped: Counter[str]
) -> pd.DataFrame:
    """One paper (id) whose files disagree on its primary category: an error naming the files,
    or with on_error=skip every copy dropped and counted (no file is trusted over another)."""
    multi = df[df.duplicated("id", keep=False)]
    if multi.empty:
        return df
    per_id = multi.groupby("id").agg(n=("primary_category", "nunique"), files=("file", "nunique"))
    bad = per_id.index[(per_id["n"] > 1) & (per_id["files"] > 1)]
    if len(bad) == 0:
        return df
    if on_error == "raise":
        first = multi[multi["id"] == bad[0]]
        where = "; ".join(
            f"{paths[f]} line {ln}: {c}"
            for f, ln, c in first[["file", "line", "primary_category"]].itertuples(index=False)
        )
        raise DataError(
            f"{len(bad)} paper(s) have different primary categories in different files, e.g. "
            f"{bad[0]}: {where}. Fix the files, drop one from data.raw_paths, or use "
            "--on-error skip to drop every copy of such papers",
            path=", ".join(map(str, paths)),
            rule="conflicting_primary",
        )
    hit = df["id"].isin(bad)
    dropped["conflicting_primary"] += int(hit.sum())
    return df[~hit]
