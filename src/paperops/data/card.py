"""The data card: a markdown page a person reads before trusting a model trained on this data."""

from __future__ import annotations

from typing import Any

from paperops.data.validate import SPLITS

_REASONS = {
    "utf8": "line is not valid UTF-8",
    "json": "line is not a JSON object",
    "required_fields": "a required field is missing",
    "field_type": "a field has the wrong type",
    "gzip_integrity": "gzip stream truncated/corrupt (rest of file unreadable)",
    "known_category": "primary category not in the arXiv taxonomy",
    "coarse_label_at_category_level": "archive-level label only (no sub-category)",
    "duplicate_id": "same arXiv id as an earlier row",
    "duplicate_text": "same normalised title+abstract as another paper",
    "rare_class": "class below min_count",
    "conflicting_primary": "files disagree on the paper's primary category (every copy dropped)",
    "archive_only_source": "source labels are archive-level or reconstructed (PROVENANCE)",
    "class_cap": "over max_per_class (seeded sample kept)",
    "holdout_class_not_in_training": "held-out paper of a class no training source has",
}


def render_card(meta: dict[str, Any], stats: dict[str, Any]) -> str:
    """Counts per class and split, and every dropped row accounted for by reason."""
    fr = meta["fractions"]
    files = "; ".join(f"`{f['path']}` (sha256 `{f['sha256'][:16]}…`)" for f in meta["raw_files"])
    split = f"- Split: **{meta['split']}**, seed {meta['seed']}, "
    if meta["split"] == "source":
        held = ", ".join(f"`{s}`" for s in meta["holdout_sources"])
        split += f"test = every paper of the held-out sources {held}; the rest "
    out = [
        "# Data card: arXiv paper classification",
        "",
        f"- Files: {files}",
        f"- Label level: **{meta['label_level']}** (primary category → "
        f"{'archive' if meta['label_level'] == 'archive' else 'canonical category'}; "
        "legacy names mapped to modern ones)",
        split
        + " / ".join(
            f"{s} {fr[s]:.0%}" for s in SPLITS if meta["split"] != "source" or s != "test"
        ),
        f"- Rows read: {stats['rows_read']:,}; rows kept: {stats['rows_out']:,}; "
        f"classes: {len(meta['labels'])} (min_count {meta['min_count']}, "
        f"max_per_class {meta.get('max_per_class') or 'none'})",
        "",
        "## Dropped rows by reason",
        "",
        "| reason | rows | meaning |",
        "|---|---:|---|",
    ]
    dropped = stats["dropped"]
    for reason, n in sorted(dropped.items(), key=lambda kv: -kv[1]):
        out.append(f"| `{reason}` | {n:,} | {_REASONS.get(reason, reason.replace('_', ' '))} |")
    if not dropped:
        out.append("| (none) | 0 | |")
    if stats["rare_classes"]:
        rare = ", ".join(
            f"`{k}` ({v})" for k, v in sorted(stats["rare_classes"].items(), key=lambda kv: -kv[1])
        )
        out += ["", f"Classes dropped for having fewer than {meta['min_count']} papers: {rare}."]
    out += _split_table("Rows per class and split", ["label", "name"])
    per = stats["per_split"]
    for entry in sorted(meta["labels"], key=lambda e: -e["count"]):
        lab = entry["label"]
        cells = " | ".join(f"{per[s].get(lab, 0):,}" for s in SPLITS)
        out.append(f"| `{lab}` | {entry['name']} | {cells} | {entry['count']:,} |")
    totals = " | ".join(f"**{sum(per[s].values()):,}**" for s in SPLITS)
    out.append(f"| **total** | | {totals} | **{stats['rows_out']:,}** |")
    out += _split_table("Rows per source and split", ["source"])
    held = set(meta.get("holdout_sources") or [])
    for src, row in sorted(stats["per_source"].items(), key=lambda kv: -sum(kv[1].values())):
        name = f"`{src}`" + (" (held out)" if src in held else "")
        cells = " | ".join(f"{row.get(s, 0):,}" for s in SPLITS)
        out.append(f"| {name} | {cells} | {sum(row.values()):,} |")
    if meta.get("archive_only_sources"):
        only = ", ".join(f"`{s}`" for s in meta["archive_only_sources"])
        out += ["", f"Archive-level labels only (never fine-level labels): {only}."]
    out += [
        "",
        "Label caveats: see the source's PROVENANCE.md (e.g. rows from archive-only feeds "
        "carry archive-level labels; `update_date` means different things per source).",
        "",
    ]
    return "\n".join(out)


def _split_table(title: str, first: list[str]) -> list[str]:
    """A section heading and the header of a table with one column per split and a total."""
    return [
        "",
        f"## {title}",
        "",
        "| " + " | ".join([*first, *SPLITS]) + " | total |",
        "|" + "---|" * len(first) + "---:|" * (len(SPLITS) + 1),
    ]
