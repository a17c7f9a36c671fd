"""Writing the registry: register a candidate, promote by hand, roll back, each one decision.

A decision reads the champion, compares and moves the `champion` alias; all three happen under
`promotion_lock`, re-reading the champion there (never trusting one read before waiting), so two
trainings finishing at once are judged one after the other and the second is compared with the
first's result. Each decision is recorded in the model's `history`, losers included. The slow
parts (creating the version, tagging it) stay outside the lock. Registration is all-or-nothing:
a failure deletes the new version again and puts the previous champion back.

May import: tracking.registry, tracking.promotion_lock, tracking.history, tracking.runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from paperops.tracking import history
from paperops.tracking.promotion_lock import promotion_lock
from paperops.tracking.registry import (
    CHAMPION,
    DEFAULT_METRIC,
    DIRECTION_TAG,
    LEVEL_TAG,
    METRIC_TAG,
    PROVENANCE_TAGS,
    SCORE_TAG,
    Decision,
    RegistryError,
    _champion,
    _check_score,
    _fmt,
    _open_existing,
    _registered_model,
    _resolve,
    _score_of,
    _versions,
    is_better,
    model_name,
)
from paperops.tracking.runs import client_for, setup_mlflow

log = logging.getLogger("paperops.tracking.promotion")


def _ensure_registered_model(client: Any, name: str) -> bool:
    """Create the registered model if missing; True when this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
        return True
    except MlflowException as e:
        if getattr(e, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            return False
        raise


def _logged_model_id(model_uri: str) -> str | None:
    """`models:/m-<id>` (what MLflow 3's log_model returns) -> `m-<id>`; registry URIs -> None."""
    prefix = "models:/"
    if model_uri.startswith(prefix):
        rest = model_uri[len(prefix) :]
        if rest and "/" not in rest and "@" not in rest:
            return rest
    return None


def _record(client: Any, action: str, d: Decision, run_id: str | None) -> None:
    before = d.champion_version_before
    history.record(
        client,
        d.name,
        action=action,
        version=d.version,
        previous_champion=before,
        new_champion=d.version if d.promoted else before,
        promoted=d.promoted,
        reason=d.reason,
        metric=d.metric,
        candidate_score=d.candidate_score,
        champion_score=d.champion_score,
        run_id=run_id,
    )


def register_candidate(
    logger_cfg: Any,
    *,
    run_id: str,
    model_uri: str,
    score: float,
    metric: str = DEFAULT_METRIC,
    higher_is_better: bool = True,
    tags: Mapping[str, Any] = (),  # type: ignore[assignment]
    name: str | None = None,
) -> Decision:
    """Register `model_uri` as a new version and move `champion` to it only if it is better.

    No champion yet -> the candidate becomes champion. A champion judged on another metric is
    compared through its run's value of `metric`; without one, the candidate is not promoted
    (promote it by hand with `paperops models promote VERSION --force`).
    """
    score = _check_score(score)
    setup_mlflow(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    run_tags = client.get_run(run_id).data.tags  # fails before anything is written
    created_model = _ensure_registered_model(client, name)

    version_tags = {k: run_tags[k] for k in PROVENANCE_TAGS if k in run_tags}
    version_tags |= {str(k): str(v) for k, v in dict(tags).items()}
    version_tags |= {  # last: extra tags cannot overwrite what the gate compares
        METRIC_TAG: metric,
        SCORE_TAG: repr(score),
        DIRECTION_TAG: str(higher_is_better).lower(),
        "run_id": run_id,
    }

    mv = client.create_model_version(
        name, source=model_uri, run_id=run_id, model_id=_logged_model_id(model_uri)
    )
    version = str(mv.version)
    try:
        for key, value in version_tags.items():
            client.set_model_version_tag(name, version, key, value)
        level = version_tags.get(LEVEL_TAG)
        with promotion_lock(client, name):
            champion = _champion(client, name)  # under the lock: the latest decision's result
            try:
                decision = _gate(
                    client, name, version, score, metric, higher_is_better, champion, level
                )
                client.update_model_version(name, version, description=decision.reason)
                if decision.promoted:
                    client.set_registered_model_alias(name, CHAMPION, version)
                _record(client, "register", decision, run_id)
            except BaseException:
                _undo(client, name, version, champion, created_model)
                raise
    except BaseException:
        if _version_exists(client, name, version):  # failed before the lock, or waiting for it
            _undo(client, name, version, None, created_model)
        raise
    log.info("%s", decision.reason)
    return decision


def _version_exists(client: Any, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
        return True
    except Exception:
        return False


def _undo(client: Any, name: str, version: str, champion: Any | None, created: bool) -> None:
    """Delete a half-registered version; put `champion` back if the alias had moved."""
    log.error("registering %s version %s failed; deleting that version", name, version)
    try:
        client.delete_model_version(name, version)  # also drops an alias pointing at it
        if champion is not None and _champion(client, name) is None:
            client.set_registered_model_alias(name, CHAMPION, str(champion.version))
        elif created and not _versions(client, name):
            client.delete_registered_model(name)
    except Exception:
        log.exception("could not delete %s version %s after a failed registration", name, version)


def _gate(
    client: Any,
    name: str,
    version: str,
    score: float,
    metric: str,
    higher_is_better: bool,
    champion: Any | None,
    level: str | None = None,
) -> Decision:
    """Promote only a strictly better score on the same metric, and never across label levels:
    an archive model's macro-F1 over ~16 archives and a category model's over ~60 categories are
    not comparable, and a server asking for one name's champion must get the task it expects
    (each level keeps its own registered model; `experiment=category` registers as
    paperops-category-classifier)."""
    direction = "higher" if higher_is_better else "lower"
    theirs = None if champion is None else (champion.tags or {}).get(LEVEL_TAG)
    if champion is not None and level is not None and theirs not in (None, level):
        reason = (
            f"v{version} is a {level}-level model but champion v{champion.version} of {name} "
            f"is {theirs}-level: not compared, champion stays v{champion.version}; register "
            f"{level}-level models under their own name (logger.registered_model=...)"
        )
        return Decision(name, version, False, reason, score, None, str(champion.version), metric)
    if champion is None:
        reason = f"no champion yet: v{version} becomes champion with {metric}={_fmt(score)}"
        return Decision(name, version, True, reason, score, None, None, metric)
    before = str(champion.version)
    champ_score = _score_of(client, champion, metric)
    if champ_score is None:
        reason = (
            f"v{version} {metric}={_fmt(score)} not promoted: champion v{before} has no "
            f"{metric} score to compare with; promote by hand with "
            f"`paperops models promote {version} --force`"
        )
        return Decision(name, version, False, reason, score, None, before, metric)
    if is_better(score, champ_score, higher_is_better):
        reason = (
            f"v{version} {metric}={_fmt(score)} beats champion v{before} "
            f"{metric}={_fmt(champ_score)} ({direction} is better): champion -> v{version}"
        )
        return Decision(name, version, True, reason, score, champ_score, before, metric)
    reason = (
        f"v{version} {metric}={_fmt(score)} does not beat champion v{before} "
        f"{metric}={_fmt(champ_score)} ({direction} is better, ties keep the champion): "
        f"champion stays v{before}"
    )
    return Decision(name, version, False, reason, score, champ_score, before, metric)


def promote(
    logger_cfg: Any, version: str | int, *, force: bool = False, name: str | None = None
) -> Decision:
    """Point `champion` at `version` by hand; a version worse than the champion needs force.

    Equal scores are allowed (a manual choice between equals is the user's call); a version
    whose score cannot be compared with the champion's also needs force. A refused promotion
    raises and is not recorded; one that happens is, as `promote` or (when only force let it
    through) `force`.
    """
    _open_existing(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    mv = _resolve(client, name, version, logger_cfg)
    version = str(mv.version)
    tags = mv.tags or {}
    metric = tags.get(METRIC_TAG, DEFAULT_METRIC)
    higher = tags.get(DIRECTION_TAG, "true") != "false"
    cand = _score_of(client, mv, metric)
    with promotion_lock(client, name):
        champion = _champion(client, name)
        before = str(champion.version) if champion is not None else None
        if champion is not None and before == version:
            reason = f"v{version} is already the champion ({metric}={_fmt(cand)})"
            return Decision(name, version, False, reason, cand, cand, before, metric)
        champ = _score_of(client, champion, metric) if champion is not None else None
        reason = _manual_reason(version, before, metric, cand, champ, higher, force)
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(
            name, version, "promoted_by", "manual" + (" (forced)" if force else "")
        )
        decision = Decision(name, version, True, reason, cand, champ, before, metric)
        _record(client, "force" if reason.startswith("forced") else "promote", decision, mv.run_id)
    log.info("%s", reason)
    return decision


def _manual_reason(
    version: str,
    before: str | None,
    metric: str,
    cand: float | None,
    champ: float | None,
    higher: bool,
    force: bool,
) -> str:
    """Why a manual promotion may happen; RegistryError when it needs --force and has none."""
    if before is None:
        return f"no champion yet: v{version} becomes champion ({metric}={_fmt(cand)})"
    if cand is None or champ is None:
        if not force:
            raise RegistryError(
                f"cannot compare v{version} ({metric}={_fmt(cand)}) with champion v{before} "
                f"({metric}={_fmt(champ)}); pass --force to promote it anyway"
            )
        return f"forced: v{version} ({metric}={_fmt(cand)}) replaces champion v{before}"
    if is_better(champ, cand, higher):
        if not force:
            direction = "higher" if higher else "lower"
            raise RegistryError(
                f"refusing to promote v{version}: {metric}={_fmt(cand)} is worse than champion "
                f"v{before} {metric}={_fmt(champ)} ({direction} is better); "
                "pass --force to promote it anyway"
            )
        return (
            f"forced: v{version} {metric}={_fmt(cand)} replaces better champion v{before} "
            f"{metric}={_fmt(champ)}"
        )
    return (
        f"v{version} {metric}={_fmt(cand)} is at least as good as champion v{before} "
        f"{metric}={_fmt(champ)}: champion -> v{version}"
    )


def rollback(
    logger_cfg: Any,
    to: str | int | None = None,
    *,
    name: str | None = None,
    reason: str | None = None,
) -> Decision:
    """Move `champion` back, whatever the scores (a rollback is a deliberate act).

    Without `to`: the champion before the current one, read from the history (the entry that
    made the current champion champion), so a second rollback undoes the first, like
    `kubectl rollout undo`; `to` picks any version. Recorded as action `rollback`.
    """
    _open_existing(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    _registered_model(client, name, logger_cfg)
    with promotion_lock(client, name):
        champion = _champion(client, name)
        before = str(champion.version) if champion is not None else None
        target = _previous_champion(client, name, before) if to is None else to
        mv = _resolve(client, name, target, logger_cfg)
        version = str(mv.version)
        metric = (mv.tags or {}).get(METRIC_TAG, DEFAULT_METRIC)
        cand = _score_of(client, mv, metric)
        if version == before:
            msg = f"v{version} is already the champion: nothing to roll back"
            return Decision(name, version, False, msg, cand, cand, before, metric)
        champ = _score_of(client, champion, metric) if champion is not None else None
        why = f" ({reason})" if reason else ""
        msg = (
            f"rollback{why}: champion v{before or '-'} ({metric}={_fmt(champ)}) -> v{version} "
            f"({metric}={_fmt(cand)})"
        )
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promoted_by", "rollback")
        decision = Decision(name, version, True, msg, cand, champ, before, metric)
        _record(client, "rollback", decision, mv.run_id)
    log.info("%s", msg)
    return decision


def _previous_champion(client: Any, name: str, current: str | None) -> str:
    """The champion before `current`, from the newest history entry that made it champion."""
    rows = history.entries(client, name)
    if not rows:
        raise RegistryError(
            f"{name} has no promotion history to roll back with (models registered before "
            "paperops recorded one have none): name the version with "
            "`paperops models rollback --to VERSION`"
        )
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back from: use --to VERSION")
    for row in rows:
        if row.get("promoted") and str(row.get("new_champion")) == current:
            previous = row.get("previous_champion")
            if previous is None:
                raise RegistryError(
                    f"v{current} became {name}'s first champion ({row.get('at')}): there is no "
                    "previous champion to roll back to"
                )
            return str(previous)
    raise RegistryError(
        f"no recorded decision made v{current} champion of {name} (moved outside paperops?): "
        "name the version with `paperops models rollback --to VERSION`"
    )
