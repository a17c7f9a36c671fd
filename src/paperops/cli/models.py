"""`paperops models ...`: inspect the model registry and move the champion alias by hand.

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
    help="List, inspect and promote registered models (the `champion` alias is what is served).",
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
    from paperops.tracking.registry import promote

    cfg = _logger_cfg(overrides)
    try:
        decision = promote(cfg, version, force=force, name=name)
    except _errors() as e:
        raise fail(str(e)) from None
    typer.echo(decision.reason)
