"""Promotion history: who moved (or kept) the champion, when, why, and what it replaced.

MLflow keeps only where an alias points now; a rollback needs where it pointed before, and an
audit needs who decided. Each decision (a registration the gate promoted or refused, a manual
promotion, a rollback) becomes one tag on the registered model itself, so the history travels
with the store (a copied SQLite file, a shared server) and needs no second database:
key `paperops.history.<epoch ms, 13 digits>.<8 hex>` (sorts by time), value a JSON object with
at, who, action, version, previous_champion, new_champion, promoted, reason, metric,
candidate_score, champion_score, run_id. Registered-model tag values are `String(5000)` in
MLflow's SQL schema (enforced by PostgreSQL and MySQL, not by SQLite), so a long reason is
shortened to fit. Written under the promotion lock by `promotion`.

May import: tracking.registry and tracking.promotion_lock (for `actor`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from paperops.tracking.promotion_lock import actor
from paperops.tracking.registry import _open_existing, _registered_model, model_name
from paperops.tracking.runs import client_for

log = logging.getLogger("paperops.tracking.history")

PREFIX = "paperops.history."
MAX_VALUE = 5000  # registered_model_tags.value is String(5000) in MLflow's SQL stores
ACTIONS = ("register", "promote", "force", "rollback")


def _encode(entry: dict[str, Any]) -> str:
    """JSON that fits MAX_VALUE, shortening only the reason."""
    value = json.dumps(entry, ensure_ascii=False)
    reason = str(entry.get("reason") or "")
    while len(value) > MAX_VALUE and reason:
        reason = reason[: max(0, len(reason) - (len(value) - MAX_VALUE) - 16)]
        value = json.dumps({**entry, "reason": reason + " [truncated]"}, ensure_ascii=False)
    return value


def record(
    client: Any,
    name: str,
    *,
    action: str,
    version: str,
    previous_champion: str | None,
    new_champion: str | None,
    promoted: bool,
    reason: str,
    metric: str | None = None,
    candidate_score: float | None = None,
    champion_score: float | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Append one decision to `name`'s history (call it under the promotion lock)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown history action {action!r}; one of {', '.join(ACTIONS)}")
    now = time.time()
    entry = {
        "at": datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds"),
        "who": actor(),
        "action": action,
        "version": str(version),
        "previous_champion": previous_champion,
        "new_champion": new_champion,
        "promoted": bool(promoted),
        "reason": reason,
        "metric": metric,
        "candidate_score": candidate_score,
        "champion_score": champion_score,
        "run_id": run_id,
    }
    key = f"{PREFIX}{int(now * 1000):013d}.{uuid.uuid4().hex[:8]}"
    client.set_registered_model_tag(name, key, _encode(entry))
    return {"key": key, **entry}


def entries(client: Any, name: str) -> list[dict[str, Any]]:
    """All recorded decisions of `name`, newest first (unreadable tags are skipped)."""
    tags = client.get_registered_model(name).tags or {}
    out = []
    for key in sorted((k for k in tags if k.startswith(PREFIX)), reverse=True):
        try:
            entry = json.loads(tags[key])
        except ValueError:
            log.warning("skipping unreadable history tag %s on %s", key, name)
            continue
        if isinstance(entry, dict):
            out.append({"key": key, **entry})
    return out


def history(logger_cfg: Any, name: str | None = None, limit: int | None = None) -> list[dict]:
    """The promotion history of a registered model, newest first (at most `limit` entries)."""
    _open_existing(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    _registered_model(client, name, logger_cfg)  # a clear error when there is no such model
    rows = entries(client, name)
    return rows if limit is None else rows[: max(0, int(limit))]
