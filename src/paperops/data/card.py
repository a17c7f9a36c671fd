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
}


def render_card(meta: dict[str, Any], stats: dict[str, Any]) -> str:
    """Counts per class and split, and every dropped row accounted for by reason."""
    fr = meta["fractions"]
    out = [
        "# Data card: arXiv paper classification",
        "",
        f"- Source: `{meta['raw_path']}` (sha256 `{meta['raw_sha256'][:16]}…`)",
        f"- Label level: **{meta['label_level']}** (primary category → "
        f"{'archive' if meta['label_level'] == 'archive' else 'canonical category'}; "
        "legacy names mapped to modern ones)",
        f"- Split: **{meta['split']}**, seed {meta['seed']}, "
        + " / ".join(f"{s} {fr[s]:.0%}" for s in SPLITS),
        f"- Rows read: {stats['rows_read']:,}; rows kept: {stats['rows_out']:,}; "
        f"classes: {len(meta['labels'])} (min_count {meta['min_count']})",
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
    out += [
        "",
        "## Rows per class and split",
        "",
        "| label | name | " + " | ".join(SPLITS) + " | total |",
        "|---|---|" + "---:|" * (len(SPLITS) + 1),
    ]
    per = stats["per_split"]
    for entry in sorted(meta["labels"], key=lambda e: -e["count"]):
        lab = entry["label"]
        cells = " | ".join(f"{per[s].get(lab, 0):,}" for s in SPLITS)
        out.append(f"| `{lab}` | {entry['name']} | {cells} | {entry['count']:,} |")
    totals = " | ".join(f"**{sum(per[s].values()):,}**" for s in SPLITS)
    out.append(f"| **total** | | {totals} | **{stats['rows_out']:,}** |")
    out += [
        "",
        "Label caveats: see the source's PROVENANCE.md (e.g. rows from archive-only feeds "
        "carry archive-level labels; `update_date` means different things per source).",
        "",
    ]
    return "\n".join(out)
