"""Load the Hydra configuration tree from the CLI without Hydra taking over the process.

The Typer CLI composes configs with Hydra's compose API, so every command accepts the same
`key=value` overrides as a `@hydra.main` script (`paperops data prepare data.min_count=20`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config could not be composed: bad override, unknown group option, missing key."""


def config_dir() -> Path:
    """$PAPEROPS_CONFIG_DIR, else ./configs of a checkout, else the copy shipped in the wheel."""
    candidates = []
    if env := os.environ.get("PAPEROPS_CONFIG_DIR"):
        candidates.append(Path(env))
    candidates += [
        Path.cwd() / "configs",
        Path(__file__).parent / "configs",  # installed wheel (force-include)
        Path(__file__).resolve().parents[2] / "configs",  # editable install from a checkout
    ]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c.resolve()
    raise ConfigError(f"no config.yaml found; looked in: {', '.join(map(str, candidates))}")


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config with Hydra overrides and resolve every interpolation up front."""
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"invalid configuration (overrides: {list(overrides)}): {e}") from e
    return cfg


def dataclass_from_mapping(cls: type, values: Mapping[str, object] | None, where: str) -> object:
    """A config dataclass from a Hydra/JSON mapping; an unknown key fails with its name, so a
    typo in a YAML file or an override is an error, not a silently ignored setting."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {where} keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """`cfg.a.b.c` or `default` when any part is missing (works on dicts and DictConfigs)."""
    node = cfg
    for key in dotted.split("."):
        if node is None:
            return default
        node = node.get(key) if hasattr(node, "get") else getattr(node, key, None)
    return default if node is None else node
