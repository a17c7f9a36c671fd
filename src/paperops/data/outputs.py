"""What prepare writes: one parquet per split, labels.json, stats.json and the data card, all in
one atomic directory swap so a reader never sees half of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from paperops.data import taxonomy
from paperops.data.card import render_card
from paperops.data.splits import SPLITS
from paperops.io import atomic_dir, file_sha256


def write_prepared(
    output_dir: Path,
    paths: list[Path],
    df: pd.DataFrame,
    labels: list[str],
    settings: dict[str, Any],
    counts: dict[str, Any],
) -> None:
    """Parquet per split, labels.json (settings, files, labels), stats.json and the card."""
    columns = [
        "id",
        "title",
        "abstract",
        "label",
        "primary_category",
        "categories",
        "update_date",
        "source",
        "line",
    ]
    per_split = {s: df.loc[df["split"] == s, "label"].value_counts().to_dict() for s in SPLITS}
    per_source = df.groupby(["source", "split"]).size()
    meta: dict[str, Any] = {
        **settings,
        "raw_files": [{"path": str(p), "sha256": file_sha256(p)} for p in paths],
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
        **counts,
        "rows_out": len(df),
        "per_split": {s: {lab: int(per_split[s].get(lab, 0)) for lab in labels} for s in SPLITS},
        "per_source": {
            src: {s: int(per_source.get((src, s), 0)) for s in SPLITS}
            for src in sorted(df["source"].unique())
        },
    }
    with atomic_dir(output_dir) as tmp:
        for s in SPLITS:
            part = df.loc[df["split"] == s, columns].reset_index(drop=True)
            part.to_parquet(tmp / f"{s}.parquet", index=False)
        (tmp / "labels.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / "data_card.md").write_text(render_card(meta, stats))
