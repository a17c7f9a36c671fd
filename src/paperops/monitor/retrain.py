"""The retrain path: drift on a trigger check -> re-run the pipeline -> the registry gate decides.

paperops never promotes a model here: `dvc repro` re-runs the stages whose data or params
changed (fresh data from a new snapshot, a harvest, or a changed config), each train run
registers a candidate, and the champion alias moves only when the candidate beats the champion
on validation. This module runs the commands and records what the registry did.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def registry_state(logger_cfg: Any) -> dict[str, Any] | None:
    """{champion, versions} of the classifier's registered model, or None when there is no
    registry (yet, or no MLflow installed)."""
    try:
        from paperops.tracking.registry import list_versions
    except ImportError:
        return None
    try:
        rows = list_versions(logger_cfg)
    except Exception as e:  # no registry yet is a normal state before the first train
        log.info("registry not readable (%s)", str(e).splitlines()[0] if str(e) else e)
        return None
    champion = next((r["version"] for r in rows if "champion" in r.get("aliases", [])), None)
    return {"champion": champion, "versions": sorted(int(r["version"]) for r in rows)}


def retrain(
    report: dict[str, Any],
    *,
    triggers: Sequence[str],
    commands: Sequence[Sequence[str]],
    timeout_s: float,
    logger_cfg: Any,
    force: bool = False,
) -> dict[str, Any]:
    """Run `commands` if a trigger check drifted (or `force`); return what happened."""
    hit = [c for c in report.get("drifted_checks", []) if c in set(triggers)]
    if not hit and not force:
        return {
            "triggered": False,
            "reason": "no trigger check drifted",
            "triggers": list(triggers),
        }
    before = registry_state(logger_cfg)
    runs: list[dict[str, Any]] = []
    ok = True
    for cmd in commands:
        argv = [str(a) for a in cmd]
        log.info("retrain: running %s", " ".join(argv))
        started = time.perf_counter()
        try:
            rc = subprocess.run(argv, timeout=timeout_s, check=False).returncode  # noqa: S603  # nosec B603 # argv from the operator's retrain config, no shell
        except FileNotFoundError:
            rc = 127
            log.error("retrain: %s not found", argv[0])
        except subprocess.TimeoutExpired:
            rc = 124
            log.error("retrain: %s ran past monitor.retrain.timeout_s", " ".join(argv))
        runs.append({"command": argv, "returncode": rc,
                     "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
        if rc != 0:
            ok = False
            break  # a failed stage: later commands would run on stale outputs
    after = registry_state(logger_cfg)
    new = sorted(set((after or {}).get("versions", [])) - set((before or {}).get("versions", [])))
    champion_before = (before or {}).get("champion")
    champion_after = (after or {}).get("champion")
    return {
        "triggered": True,
        "checks": hit,
        "forced": force and not hit,
        "ok": ok,
        "commands": runs,
        "new_versions": new,
        "champion_before": champion_before,
        "champion_after": champion_after,
        "promoted": champion_after is not None and champion_after != champion_before,
    }
