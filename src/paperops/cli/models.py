"""`paperops models ...`: inspect the model registry, move the champion alias by hand, read the
promotion history and roll back.

Mounted by the root CLI as `app.add_typer(models_app, name="models")`. Each command composes the
Hydra config, so the store is chosen like everywhere else:
`paperops models list logger.tracking_uri=sqlite:///elsewhere/mlflow.db`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from paperops.cli.common import Overrides, fail
from paperops.config import ConfigError, load_config

models_app = typer.Typer(
    help="List, inspect, promote and roll back registered models (the `champion` alias is what "
    "is served).",
    no_args_is_help=True,
)

NameOption = Annotated[
    str | None,
    typer.Option("--name", help="Registered model (default: logger.registered_model)."),
]


def _logger_cfg(overrides: list[str] | None) -> Any:
    try:
        return load_config(overrides or []).logger
    except ConfigError as e:
        raise fail(str(e)) from None


def _errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    from paperops.tracking.registry import RegistryError

    return (RegistryError, MlflowException, ValueError, OSError)


def _split_ref(ref: str | None, overrides: list[str] | None) -> tuple[str, list[str]]:
    """`show key=value` means the champion with an override, not a version called `key=value`."""
    overrides = list(overrides or [])
    if ref is not None and "=" in ref:
        return "champion", [ref, *overrides]
    return ref or "champion", overrides


def render_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of versions; the champion carries a `*`."""
    headers = ["", "version", "aliases", "metric", "score", "family", "run_id", "created"]
    lines = []
    for r in rows:
        star = "*" if "champion" in r["aliases"] else ""
        score = "" if r["score"] is None else f"{r['score']:.4f}"
        lines.append(
            [
                star,
                r["version"],
                ",".join(r["aliases"]),
                r["metric"] or "",
                score,
                r["family"] or "",
                (r["run_id"] or "")[:12],
                r["created"] or "",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *lines, strict=True)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([fmt(headers), *(fmt(line) for line in lines)])


def render_show(info: dict[str, Any]) -> str:
    """A readable block: identity, score, provenance tags and the training run's metrics."""
    skip = {"metric", "score", "family", "run_id"}
    lines = [
        f"{info['name']} v{info['version']}"
        + (f"  [{', '.join(info['aliases'])}]" if info["aliases"] else ""),
        f"  model_uri: {info['model_uri']}",
        f"  score:     {info['metric']}={info['score']}",
        f"  family:    {info['family']}",
        f"  run_id:    {info['run_id']}",
        f"  created:   {info['created']}",
    ]
    if info["description"]:
        lines.append(f"  decision:  {info['description']}")
    extra = {k: v for k, v in info["tags"].items() if k not in skip}
    if extra:
        lines.append("  tags:")
        lines += [f"    {k}: {v}" for k, v in sorted(extra.items())]
    run = info.get("run") or {}
    if run.get("metrics"):
        lines.append(f"  run metrics ({run.get('run_name')}, {run.get('status')}):")
        lines += [f"    {k}: {v:.6g}" for k, v in run["metrics"].items()]
    return "\n".join(lines)


@models_app.command("list")
def list_cmd(overrides: Overrides = None, name: NameOption = None) -> None:
    """Every registered version, newest first; `*` marks the champion."""
    from paperops.tracking.registry import list_versions

    cfg = _logger_cfg(overrides)
    try:
        rows = list_versions(cfg, name)
    except _errors() as e:
        raise fail(str(e)) from None
    typer.echo(render_table(rows))


@models_app.command("show")
def show_cmd(
    ref: Annotated[
        str | None, typer.Argument(help="A version number or alias (default: champion).")
    ] = None,
    overrides: Overrides = None,
    name: NameOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One version: score, provenance tags, gate decision and its run's metrics."""
    from paperops.tracking.registry import show

    ref, overrides = _split_ref(ref, overrides)
    cfg = _logger_cfg(overrides)
    try:
        info = show(cfg, ref, name)
    except _errors() as e:
        raise fail(str(e)) from None
    typer.echo(json.dumps(info, indent=2) if as_json else render_show(info))


@models_app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    overrides: Overrides = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if it scores worse than the champion.")
    ] = False,
    name: NameOption = None,
) -> None:
    """Move the `champion` alias to VERSION; refuses a worse version unless --force."""
    from paperops.tracking.promotion import promote

    cfg = _logger_cfg(overrides)
    try:
        decision = promote(cfg, version, force=force, name=name)
    except _errors() as e:
        raise fail(str(e)) from None
    typer.echo(decision.reason)


def _champion_move(row: dict[str, Any]) -> str:
    before = row.get("previous_champion")
    after = row.get("new_champion")
    if not row.get("promoted"):
        return f"v{before} (kept)" if before else "- (kept)"
    return f"{'v' + str(before) if before else '-'} -> v{after}"


def render_history(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of decisions, newest first; the reason is the last, unpadded column."""
    headers = ["when", "who", "action", "version", "champion", "reason"]
    lines = [
        [
            str(r.get("at") or "").replace("T", " ")[:19],
            str(r.get("who") or ""),
            str(r.get("action") or ""),
            f"v{r.get('version')}",
            _champion_move(r),
            str(r.get("reason") or ""),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(headers, *lines, strict=True)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([fmt(headers), *(fmt(line) for line in lines)])


@models_app.command("history")
def history_cmd(
    overrides: Overrides = None,
    name: NameOption = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Show only the newest K decisions.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every champion decision, newest first: who, when, what moved, and why (losers too)."""
    from paperops.tracking.history import history

    cfg = _logger_cfg(overrides)
    try:
        rows = history(cfg, name, limit)
    except _errors() as e:
        raise fail(str(e)) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo("no promotion history recorded yet")
    else:
        typer.echo(render_history(rows))


@models_app.command("rollback")
def rollback_cmd(
    overrides: Overrides = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="The version to restore (default: the previous champion)."),
    ] = None,
    name: NameOption = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why, recorded in the history.")
    ] = None,
) -> None:
    """Move `champion` back to the previous champion (or --to VERSION), whatever the scores."""
    from paperops.tracking.promotion import rollback

    cfg = _logger_cfg(overrides)
    try:
        decision = rollback(cfg, to, name=name, reason=reason)
    except _errors() as e:
        raise fail(str(e)) from None
    typer.echo(decision.reason)
