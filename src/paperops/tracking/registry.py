"""Model registry with a champion gate: the `champion` alias only ever moves to a better model.

Every trained candidate becomes a version of the registered model (default
`paperops-classifier`), tagged with the metric it was judged on, its score, its family, data hash,
git sha and run id. The alias `champion` — what serving and evaluation load — moves to the new
version only when it is strictly better than the current champion on the same metric (higher
macro-F1, or lower perplexity for `paperops-generator`). A manual `promote` refuses a worse
version unless forced. Registration is all-or-nothing: if tagging or the alias move fails, the
new version is deleted again, so the registry never holds a half-registered model.

Check-then-set of the alias is not atomic: two trainings finishing at the same instant against
one shared store could both see the same old champion. Runs are minutes apart in practice.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paperops.tracking.runs import SQLITE_PREFIX, cfg_value, client_for, setup_mlflow, tracking_uri

log = logging.getLogger("paperops.tracking.registry")

CHAMPION = "champion"
DEFAULT_NAME = "paperops-classifier"
DEFAULT_METRIC = "val_macro_f1"
# version tags
METRIC_TAG, SCORE_TAG, DIRECTION_TAG = "metric", "score", "higher_is_better"
LEVEL_TAG = "label_level"  # archive | category: never compared across
PROVENANCE_TAGS = ("family", "data_hash", "git_sha", "git_dirty", "paperops_version")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked: no model yet, unknown version, a refused promotion."""


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one version, and why (both scores in `reason`)."""

    name: str
    version: str
    promoted: bool
    reason: str
    candidate_score: float | None
    champion_score: float | None
    champion_version_before: str | None
    metric: str = DEFAULT_METRIC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_name(logger_cfg: Any, name: str | None = None) -> str:
    return str(name or cfg_value(logger_cfg, "registered_model", DEFAULT_NAME))


def _is_not_found(e: Exception) -> bool:
    code = getattr(e, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def is_better(candidate: float, champion: float, higher_is_better: bool) -> bool:
    """Strictly better: a tie keeps the incumbent (no churn on equal scores)."""
    return candidate > champion if higher_is_better else candidate < champion


def _check_score(score: Any) -> float:
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"score must be a number; got {score!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"score must be finite; got {value} (a diverged or failed evaluation?)")
    return value


# --- reading the registry ----------------------------------------------------------------------


def _open_existing(logger_cfg: Any) -> None:
    """setup_mlflow for readers: a missing SQLite store is an error, not a new empty database."""
    uri = tracking_uri(logger_cfg)
    if uri.startswith(SQLITE_PREFIX) and not Path(uri[len(SQLITE_PREFIX) :]).is_file():
        raise RegistryError(
            f"no MLflow store at {uri}: run `paperops train` first to train and register a model "
            "(or point logger.tracking_uri at an existing store)"
        )
    setup_mlflow(logger_cfg)


def _registered_model(client: Any, name: str, logger_cfg: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if _is_not_found(e):
            raise RegistryError(
                f"no registered model {name!r} in {cfg_value(logger_cfg, 'tracking_uri')}: "
                "run `paperops train` first to train and register one"
            ) from None
        raise


def _versions(client: Any, name: str) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        out += list(page)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda mv: int(mv.version))


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if _is_not_found(e):
            return None
        raise


def _score_of(client: Any, mv: Any, metric: str) -> float | None:
    """A version's score on `metric`: its tags when judged on it, else its run's metric."""
    tags = mv.tags or {}
    if tags.get(METRIC_TAG) == metric and SCORE_TAG in tags:
        try:
            return float(tags[SCORE_TAG])
        except ValueError:
            return None
    if mv.run_id:
        try:
            value = client.get_run(mv.run_id).data.metrics.get(metric)
        except Exception:  # run deleted or store moved: no comparable score
            return None
        return None if value is None else float(value)
    return None


def _resolve(client: Any, name: str, ref: str | int, logger_cfg: Any) -> Any:
    """A version by number ("3", "v3", 3) or alias ("champion"), with errors that list options."""
    from mlflow.exceptions import MlflowException

    rm = _registered_model(client, name, logger_cfg)
    ref_s = str(ref).strip()
    number = ref_s[1:] if ref_s[:1] in ("v", "V") and ref_s[1:].isdigit() else ref_s
    if number.isdigit():
        try:
            return client.get_model_version(name, number)
        except MlflowException as e:
            if not _is_not_found(e):
                raise
        known = ", ".join(str(mv.version) for mv in _versions(client, name)) or "none"
        raise RegistryError(f"{name} has no version {number}; known versions: {known}") from None
    mv = None
    try:
        mv = client.get_model_version_by_alias(name, ref_s)
    except MlflowException as e:
        if not _is_not_found(e):
            raise
    if mv is None:
        if ref_s == CHAMPION:
            raise RegistryError(
                f"{name} has no champion yet: run `paperops train` to register a candidate "
                "(the first one becomes champion)"
            )
        aliases = ", ".join(sorted(rm.aliases)) or "none"
        raise RegistryError(f"{name} has no alias {ref_s!r}; aliases: {aliases}")
    return mv


def _created(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _row(mv: Any, aliases: list[str]) -> dict[str, Any]:
    tags = mv.tags or {}
    score = tags.get(SCORE_TAG)
    return {
        "version": str(mv.version),
        "aliases": aliases,
        "metric": tags.get(METRIC_TAG),
        "score": float(score) if score is not None else None,
        "family": tags.get("family"),
        "run_id": mv.run_id,
        "created": _created(mv.creation_timestamp),
    }


def _aliases_by_version(rm: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, version in (rm.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return {v: sorted(a) for v, a in out.items()}


def list_versions(logger_cfg: Any, name: str | None = None) -> list[dict[str, Any]]:
    """Every version, newest first: version, aliases, metric, score, family, run_id, created."""
    _open_existing(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    aliases = _aliases_by_version(_registered_model(client, name, logger_cfg))
    rows = [_row(mv, aliases.get(str(mv.version), [])) for mv in _versions(client, name)]
    return rows[::-1]


def show(logger_cfg: Any, ref: str | int = CHAMPION, name: str | None = None) -> dict[str, Any]:
    """One version in full: registry info, all tags, and the metrics of the run that trained it."""
    _open_existing(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    mv = _resolve(client, name, ref, logger_cfg)
    aliases = _aliases_by_version(client.get_registered_model(name)).get(str(mv.version), [])
    info = {
        "name": name,
        **_row(mv, aliases),
        "model_uri": f"models:/{name}/{mv.version}",
        "source": mv.source,
        "status": mv.status,
        "description": mv.description or "",
        "tags": dict(mv.tags or {}),
        "run": None,
    }
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            info["run"] = {
                "run_id": mv.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "metrics": dict(sorted(run.data.metrics.items())),
            }
        except Exception as e:  # a deleted run must not hide the version
            info["run"] = {"run_id": mv.run_id, "error": str(e).splitlines()[0]}
    return info


def download_bundle(
    logger_cfg: Any,
    ref: str | int = CHAMPION,
    dst: Path | None = None,
    *,
    name: str | None = None,
) -> Path:
    """The bundle directory of a version (default: the champion), for evaluation and serving.

    The model is downloaded into a fresh `dst/v<version>` (replaced if present; `dst` defaults
    to a new temporary directory); the returned path is the bundle inside it, which
    `paperops.models.base.load_classifier` loads.
    """
    import mlflow
    from mlflow.models import Model

    # deferred: pulls mlflow
    from paperops.tracking.pyfunc_classifier import BUNDLE_ARTIFACT

    _open_existing(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    mv = _resolve(client, name, ref, logger_cfg)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="paperops-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{mv.version}-", dir=dst))
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp)
        )
        conf = Model.load(str(tmp)).flavors.get("python_function", {})
        rel = conf.get("artifacts", {}).get(BUNDLE_ARTIFACT, {}).get("path")
        if not rel or not (tmp / rel).is_dir():
            raise RegistryError(
                f"{name} version {mv.version} holds no paperops bundle (artifact "
                f"{BUNDLE_ARTIFACT!r}); was it logged with paperops.tracking.log_model_bundle?"
            )
        final = dst / f"v{mv.version}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / rel


# --- writing the registry ----------------------------------------------------------------------


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
    champion = None if created_model else _champion(client, name)

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
        decision = _gate(client, name, version, score, metric, higher_is_better, champion, level)
        client.update_model_version(name, version, description=decision.reason)
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
    except BaseException:
        log.error("registering %s version %s failed; deleting that version", name, version)
        try:
            client.delete_model_version(name, version)  # also drops an alias pointing at it
            if champion is not None and _champion(client, name) is None:
                client.set_registered_model_alias(name, CHAMPION, str(champion.version))
            elif created_model and not _versions(client, name):
                client.delete_registered_model(name)
        except Exception:
            log.exception(
                "could not delete %s version %s after a failed registration", name, version
            )
        raise
    log.info("%s", decision.reason)
    return decision


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
        return Decision(
            name,
            version,
            True,
            f"no champion yet: v{version} becomes champion with {metric}={_fmt(score)}",
            score,
            None,
            None,
            metric,
        )
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
    whose score cannot be compared with the champion's also needs force.
    """
    _open_existing(logger_cfg)
    client, name = client_for(logger_cfg), model_name(logger_cfg, name)
    mv = _resolve(client, name, version, logger_cfg)
    version = str(mv.version)
    tags = mv.tags or {}
    metric = tags.get(METRIC_TAG, DEFAULT_METRIC)
    higher = tags.get(DIRECTION_TAG, "true") != "false"
    cand = _score_of(client, mv, metric)
    champion = _champion(client, name)
    before = str(champion.version) if champion is not None else None
    if champion is not None and before == version:
        reason = f"v{version} is already the champion ({metric}={_fmt(cand)})"
        return Decision(name, version, False, reason, cand, cand, before, metric)
    champ = _score_of(client, champion, metric) if champion is not None else None

    if champion is None:
        reason = f"no champion yet: v{version} becomes champion ({metric}={_fmt(cand)})"
    elif cand is None or champ is None:
        if not force:
            raise RegistryError(
                f"cannot compare v{version} ({metric}={_fmt(cand)}) with champion v{before} "
                f"({metric}={_fmt(champ)}); pass --force to promote it anyway"
            )
        reason = f"forced: v{version} ({metric}={_fmt(cand)}) replaces champion v{before}"
    elif is_better(champ, cand, higher):
        direction = "higher" if higher else "lower"
        if not force:
            raise RegistryError(
                f"refusing to promote v{version}: {metric}={_fmt(cand)} is worse than champion "
                f"v{before} {metric}={_fmt(champ)} ({direction} is better); "
                "pass --force to promote it anyway"
            )
        reason = (
            f"forced: v{version} {metric}={_fmt(cand)} replaces better champion v{before} "
            f"{metric}={_fmt(champ)}"
        )
    else:
        reason = (
            f"v{version} {metric}={_fmt(cand)} is at least as good as champion v{before} "
            f"{metric}={_fmt(champ)}: champion -> v{version}"
        )
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(
        name, version, "promoted_by", "manual" + (" (forced)" if force else "")
    )
    log.info("%s", reason)
    return Decision(name, version, True, reason, cand, champ, before, metric)
