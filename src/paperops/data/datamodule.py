"""Processed splits as model inputs: texts, integer labels, and a hash that names the data.

Every family (and evaluation) reads data through `load_splits_for_model`, so the text a model
sees (`model_text`), the label indices (labels.json order) and any subsampling are the same in
training, evaluation and benchmarks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperops.data.text import model_text

SPLIT_NAMES = ("train", "val", "calibration", "test")


class EmptySplitError(ValueError):
    """A split needed for training or evaluation has no rows."""


@dataclass
class TextSplit:
    """One split: the frame as prepared, the model texts and label indices aligned with it."""

    name: str
    frame: pd.DataFrame
    texts: list[str]
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def read_labels(processed_dir: Path) -> tuple[list[str], dict[str, Any]]:
    path = Path(processed_dir) / "labels.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `paperops data prepare` first")
    meta = json.loads(path.read_text())
    return [e["label"] for e in meta["labels"]], meta


def stratified_cap(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows, keeping class proportions (every class keeps >= 1 row).

    Seeded and independent of row order, so a capped demo run sees the same papers every time.
    """
    if max_rows is None or len(frame) <= max_rows:
        return frame
    frac = max_rows / len(frame)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for _, group in frame.groupby("label", sort=True):
        n = max(1, round(len(group) * frac))
        idx = np.sort(group["id"].to_numpy())  # order-independent: pick by sorted id
        chosen = set(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist())
        keep += group.index[group["id"].isin(chosen)].tolist()
    return frame.loc[sorted(keep)].reset_index(drop=True)


def load_splits_for_model(
    processed_dir: Path,
    names: Sequence[str] = SPLIT_NAMES,
    *,
    max_rows: Mapping[str, int | None] | None = None,
    seed: int = 42,
) -> tuple[dict[str, TextSplit], list[str]]:
    """Read the named splits; `max_rows[split]` caps a split (stratified) for demos and tests."""
    processed_dir = Path(processed_dir)
    labels, _ = read_labels(processed_dir)
    index = {lab: i for i, lab in enumerate(labels)}
    out: dict[str, TextSplit] = {}
    for name in names:
        path = processed_dir / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `paperops data prepare` first")
        frame = pd.read_parquet(path)
        frame = stratified_cap(frame, (max_rows or {}).get(name), seed)
        if frame.empty:
            raise EmptySplitError(
                f"{path} has no rows: re-run `paperops data prepare` with fractions that give "
                f"the {name} split some papers"
            )
        unknown = sorted(set(frame["label"]) - set(index))
        if unknown:
            raise ValueError(f"{path}: labels not in labels.json: {unknown[:5]}")
        texts = [model_text(t, a) for t, a in zip(frame["title"], frame["abstract"], strict=True)]
        y = frame["label"].map(index).to_numpy(dtype=np.int64)
        out[name] = TextSplit(name, frame, texts, y)
    return out, labels


def data_hash(processed_dir: Path) -> str:
    """sha256 over labels.json and every split file: names exactly the data a model saw."""
    h = hashlib.sha256()
    processed_dir = Path(processed_dir)
    for name in ("labels.json", *(f"{s}.parquet" for s in SPLIT_NAMES)):
        path = processed_dir / name
        if path.is_file():
            h.update(name.encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
