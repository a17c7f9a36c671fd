"""The language model's training corpus: documents from a source, split with no text in two splits.

Sources:
- `mqp`: the medical question pairs CSV (no header: dr_id, question_1, question_2, label). Every
  distinct question is one document. A question and its rewrites are linked (union-find over the
  pairs), and whole groups go to one split, so neither a question nor its paraphrase leaks from
  train into val/test. `split_by: dr_id` additionally keeps each doctor's questions together.
- `arxiv`: "Title: ...\\nAbstract: ..." from the classifier's processed splits, whose split already
  de-duplicates papers; train->train, val->val, test->test. The calibration split is unused: the LM
  has no calibration step, and leaving it out keeps val the same papers the classifier validated on.

prepare drops rows that break the length rules (counted by rule, like `data prepare`), then runs
the pandera rules on the final splits; a violation raises and writes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperops.data.corpus_rules import SPLITS, CorpusValidationError, text_key, validate_frames
from paperops.data.errors import DataError
from paperops.data.sources import read_mqp_csv
from paperops.data.text import clean_whitespace
from paperops.data.validate import (
    ValidationReport,
    write_report,
)
from paperops.io import atomic_dir, atomic_write_text, file_sha256

log = logging.getLogger(__name__)

SOURCES = ("mqp", "arxiv")
SPLIT_BY = ("question", "dr_id")
COMMAND = "paperops data prepare-corpus"


@dataclass
class CorpusConfig:
    name: str
    source: str
    path: Path
    output_dir: Path
    split_by: str = "question"
    fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    limits: dict[str, int] = field(default_factory=lambda: {"min_chars": 10, "max_chars": 2000})
    min_rows: dict[str, int] = field(default_factory=lambda: {"train": 1, "val": 1, "test": 1})
    max_rows: dict[str, int | None] | None = None
    report_path: Path | None = None
    max_examples: int = 5

    @classmethod
    def from_config(cls, corpus: Any, **overrides: Any) -> CorpusConfig:
        """Build from the Hydra `corpus` group; unknown keys are errors (a typo is not ignored)."""
        values = {k: corpus[k] for k in corpus}
        for key in ("fractions", "limits", "min_rows", "max_rows"):
            if values.get(key) is not None:
                values[key] = dict(values[key])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown corpus keys {unknown}; known: {sorted(known)}")
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        self.path, self.output_dir = Path(self.path), Path(self.output_dir)
        if self.report_path is not None:
            self.report_path = Path(self.report_path)
        if self.source not in SOURCES:
            raise ValueError(f"corpus.source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(
                f"corpus.split_by must be one of {list(SPLIT_BY)}, got {self.split_by!r}"
            )
        if set(self.fractions) != set(SPLITS):
            raise ValueError(
                f"corpus.fractions must have exactly the keys {list(SPLITS)}, "
                f"got {sorted(self.fractions)}"
            )
        fr = self.fractions.values()
        if any(f <= 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise ValueError(
                f"corpus.fractions must be positive and sum to 1, got {dict(self.fractions)}"
            )
        if set(self.limits) != {"min_chars", "max_chars"}:
            raise ValueError(
                f"corpus.limits needs exactly min_chars and max_chars, got {sorted(self.limits)}"
            )
        if not 1 <= self.limits["min_chars"] <= self.limits["max_chars"]:
            raise ValueError(
                f"corpus.limits must satisfy 1 <= min_chars <= max_chars, got {self.limits}"
            )
        if set(self.min_rows) != set(SPLITS):
            raise ValueError(
                f"corpus.min_rows must have exactly the keys {list(SPLITS)}, "
                f"got {sorted(self.min_rows)}"
            )
        self.max_rows = _check_max_rows(self.max_rows, "corpus.max_rows")


@dataclass
class CorpusResult:
    output_dir: Path
    counts: dict[str, int]
    dropped: dict[str, int]
    seconds: float
    report: ValidationReport | None = None


def _check_max_rows(max_rows: Mapping[str, Any] | None, where: str) -> dict[str, int | None] | None:
    if max_rows is None:
        return None
    unknown = sorted(set(max_rows) - set(SPLITS))
    if unknown:
        raise ValueError(f"{where}: unknown split(s) {unknown}; known: {list(SPLITS)}")
    out: dict[str, int | None] = {}
    for k, v in max_rows.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{where}.{k} must be a positive integer or null, got {v!r}")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# pandera rules


# ---------------------------------------------------------------------------------------------
# splitting


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def assign_groups(
    sizes: Mapping[int, int], fractions: Mapping[str, float], seed: int
) -> dict[int, str]:
    """Whole groups to splits: shuffle (seeded), fill test then val up to their fraction of the
    documents (each gets at least one group), the rest is train. Deterministic for a seed."""
    groups = sorted(sizes)
    if len(groups) < len(SPLITS):
        raise DataError(
            f"only {len(groups)} group(s) of linked questions; need at least {len(SPLITS)} "
            "to fill train, val and test (split_by=dr_id also joins doctors who share a question)",
            rule="enough_groups",
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    total = sum(sizes.values())
    out: dict[int, str] = {}
    pos = 0
    for name in ("test", "val"):
        target, got = fractions[name] * total, 0
        # keep at least one group per remaining split
        while pos < len(order) - (2 if name == "test" else 1) and (got == 0 or got < target):
            g = groups[order[pos]]
            out[g] = name
            got += sizes[g]
            pos += 1
    for i in order[pos:]:
        out[groups[i]] = "train"
    return out


# ---------------------------------------------------------------------------------------------
# sources


def _length_filter(
    df: pd.DataFrame, limits: Mapping[str, int], dropped: Counter[str]
) -> pd.DataFrame:
    n = df["text"].str.len()
    empty = df["text"].str.strip().str.len() == 0
    short = ~empty & (n < limits["min_chars"])
    long = n > limits["max_chars"]
    rules = {"non_empty_text": empty, "text_too_short": short, "text_too_long": long}
    for name, mask in rules.items():
        if mask.any():
            dropped[name] += int(mask.sum())
    return df[~(empty | short | long)]


def _mqp_documents(cfg: CorpusConfig, seed: int, dropped: Counter[str]) -> pd.DataFrame:
    rows = pd.DataFrame(read_mqp_csv(cfg.path))  # raises DataError naming file, line and rule
    rows["question_1"] = clean_whitespace(rows["question_1"])
    rows["question_2"] = clean_whitespace(rows["question_2"])
    rows["k1"], rows["k2"] = text_key(rows["question_1"]), text_key(rows["question_2"])
    uf = _UnionFind()
    docs: dict[str, dict[str, Any]] = {}  # normalised key -> first occurrence
    for r in rows.itertuples(index=False):
        k1, k2 = r.k1, r.k2
        uf.union(("q", k1), ("q", k2))
        if cfg.split_by == "dr_id":
            uf.union(("dr", r.dr_id), ("q", k1))
        for key, text in ((k1, r.question_1), (k2, r.question_2)):
            docs.setdefault(key, {"text": text, "dr_id": r.dr_id, "source_row": r.line})
    repeats = 2 * len(rows) - len(docs)
    if repeats:
        dropped["repeated_question"] += repeats  # a question used in several pairs: one doc
    df = pd.DataFrame.from_dict(docs, orient="index")
    df.index.name = "key"
    df = df.reset_index()
    roots = [uf.find(("q", k)) for k in df["key"]]
    root_ids = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    df["group"] = [root_ids[r] for r in roots]
    df["doc_id"] = [f"mqp-{i:05d}" for i in range(len(df))]
    df = _length_filter(df, cfg.limits, dropped)
    try:
        split = assign_groups(df.groupby("group").size().to_dict(), cfg.fractions, seed)
    except DataError as e:
        raise DataError(e.message, path=cfg.path, rule=e.rule) from None
    df["split"] = df["group"].map(split)
    return df[["doc_id", "text", "group", "dr_id", "source_row", "split"]]


def _arxiv_documents(cfg: CorpusConfig, dropped: Counter[str]) -> pd.DataFrame:
    frames = []
    for name in SPLITS:
        path = cfg.path / f"{name}.parquet"
        if not path.is_file():
            raise DataError(
                f"{name}.parquet not found: run `paperops data prepare` first",
                path=path,
                rule="file_exists",
            )
        df = pd.read_parquet(path, columns=["id", "title", "abstract", "label", "line"])
        df = df.assign(split=name)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["text"] = "Title: " + df["title"].str.strip() + "\nAbstract: " + df["abstract"].str.strip()
    df = df.rename(columns={"id": "doc_id", "line": "source_row"})
    df["group"] = df["doc_id"]
    df = _length_filter(df, cfg.limits, dropped)
    # The classifier's prepare already de-duplicates by normalised title+abstract (the same key as
    # the cross-split rule, which checks the capped output). Exact copies, cheap to find, are
    # dropped here too for a hand-made processed dir: the first copy is kept (train first).
    dup = df["text"].duplicated(keep="first")
    if dup.any():
        dropped["duplicate_text"] += int(dup.sum())
        df = df[~dup]
    return df[["doc_id", "text", "group", "label", "source_row", "split"]]


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most n rows, seeded, in their original order (so a cap is a stable subset)."""
    if n is None or len(df) <= n:
        return df
    return df.sample(n=n, random_state=seed).sort_index()


def _source_files(cfg: CorpusConfig) -> list[Path]:
    if cfg.source == "mqp":
        return [cfg.path]
    return [cfg.path / f"{n}.parquet" for n in SPLITS]


def _stats(df: pd.DataFrame) -> dict[str, Any]:
    chars = df["text"].str.len()
    words = df["text"].str.split().str.len()

    def summary(s: pd.Series) -> dict[str, float]:
        if s.empty:
            return {"total": 0, "mean": 0.0, "min": 0, "median": 0.0, "max": 0}
        return {
            "total": int(s.sum()),
            "mean": round(float(s.mean()), 2),
            "min": int(s.min()),
            "median": float(s.median()),
            "max": int(s.max()),
        }

    return {"rows": len(df), "chars": summary(chars), "words": summary(words)}


def prepare_corpus(config: CorpusConfig, seed: int) -> CorpusResult:
    """Build, validate and write the corpus atomically (all or nothing)."""
    t0 = time.perf_counter()
    dropped: Counter[str] = Counter()
    if config.source == "mqp":
        df = _mqp_documents(config, seed, dropped)
    else:
        df = _arxiv_documents(config, dropped)
    splits: dict[str, pd.DataFrame] = {}
    for name in SPLITS:
        part = df[df["split"] == name].drop(columns="split")
        cap = (config.max_rows or {}).get(name)
        capped = _sample(part, cap, seed)
        if len(capped) < len(part):
            dropped[f"max_rows_{name}"] += len(part) - len(capped)
        splits[name] = capped.reset_index(drop=True)

    report = validate_frames(
        splits,
        config.limits,
        config.min_rows,
        target=str(config.output_dir),
        max_examples=config.max_examples,
    )
    if not report.ok:
        raise CorpusValidationError(report)

    counts = {n: len(d) for n, d in splits.items()}
    meta = {
        "name": config.name,
        "source": config.source,
        "split_by": config.split_by if config.source == "mqp" else "processed",
        "seed": seed,
        "counts": counts,
        "dropped": dict(sorted(dropped.items())),
        "stats": {n: _stats(d) for n, d in splits.items()},
        "sources": {str(p): file_sha256(p) for p in _source_files(config)},
        "config": _config_dict(config),
    }
    with atomic_dir(config.output_dir) as tmp:
        for name, part in splits.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
        atomic_write_text(tmp / "corpus.json", json.dumps(meta, indent=2) + "\n")
    seconds = time.perf_counter() - t0
    log.info("corpus %s: %s -> %s (%.1f s)", config.name, counts, config.output_dir, seconds)
    return CorpusResult(config.output_dir, counts, dict(dropped), seconds, report)


def _config_dict(config: CorpusConfig) -> dict[str, Any]:
    d = asdict(config)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def write_validation(report: ValidationReport, path: str | Path) -> None:
    """validation.json for the DVC stage's metrics (same shape as the classifier data's)."""
    write_report(report, Path(path))


# ---------------------------------------------------------------------------------------------
# the training job's view


def load_corpus(
    output_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    max_rows: Mapping[str, int | None] | None = None,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Texts per split; `max_rows` caps a split (seeded subset, original order kept)."""
    output_dir = Path(output_dir)
    max_rows = _check_max_rows(max_rows, "max_rows") or {}
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown corpus split(s) {unknown}; known: {list(SPLITS)}")
    out: dict[str, list[str]] = {}
    for name in splits:
        path = output_dir / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `{COMMAND}` (e.g. `{COMMAND} corpus=mqp`) first"
            )
        df = pd.read_parquet(path, columns=["text"])
        out[name] = _sample(df, max_rows.get(name), seed)["text"].tolist()
    return out


def validate_corpus(output_dir: str | Path, cfg: CorpusConfig) -> ValidationReport:
    """Check a prepared corpus directory against the rules (what the DVC stage reports)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(
            f"corpus {output_dir} not found: run `{COMMAND} corpus={cfg.name}` first"
        )
    splits = {
        n: pd.read_parquet(output_dir / f"{n}.parquet")
        for n in SPLITS
        if (output_dir / f"{n}.parquet").is_file()
    }
    return validate_frames(
        splits, cfg.limits, cfg.min_rows, target=str(output_dir), max_examples=cfg.max_examples
    )
