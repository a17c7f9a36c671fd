"""What a drift run compares and how: the `monitor` config group (`DriftConfig`), the window
syntax (`24h`, `7d`, `all`), and the two samples a check sees (`Reference`: the training split;
`Window`: logged requests).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paperops.data.text import model_text

CHECKS = ("length", "vocabulary", "embedding", "label", "accuracy")


_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class DriftError(ValueError):
    """A drift job that cannot run as configured (bad window, no reference, no log)."""


def parse_window(spec: str | int | float, now: float) -> tuple[float | None, float]:
    """`30m`, `24h`, `7d`, `2w`, a number of seconds, or `all` -> (since, until=now)."""
    text = str(spec).strip().lower()
    if text == "all":
        return None, now
    if re.fullmatch(r"\d+(\.\d+)?", text):
        text += "s"
    m = _WINDOW.match(text)
    if not m or float(m.group(1)) <= 0:
        raise DriftError(
            f"monitor.window {spec!r} is not a window: use a positive duration like 30m, 24h, "
            "7d or 2w, or `all`"
        )
    return now - float(m.group(1)) * _UNITS[m.group(2)], now


@dataclass(frozen=True)
class DriftConfig:
    """configs/monitor/default.yaml as a plain object (validated on construction)."""

    request_log: str
    window: str = "24h"
    max_papers: int = 2000
    min_papers: int = 100
    min_feedback: int = 30
    processed_dir: str = "data/processed"
    reference_split: str = "train"
    reference_max_papers: int = 2000
    null_papers: int = 1000
    null_resamples: int = 200
    null_quantile: float = 0.99
    embedding_method: str = "encoder"
    encoder: str = "default"
    cache_dir: str | None = None
    batch_size: int = 64
    lsa_dims: int = 100
    top_words: int = 5000
    thresholds: dict[str, float] = field(default_factory=dict)
    seed: int = 42
    output_dir: str = "reports/drift"
    store: bool = True

    def __post_init__(self) -> None:
        if not self.request_log:
            raise DriftError("monitor.request_log is empty: point it at serve.request_log.url")
        for key in (
            "max_papers",
            "min_papers",
            "reference_max_papers",
            "top_words",
            "lsa_dims",
            "null_papers",
            "null_resamples",
        ):
            if int(getattr(self, key)) < 1:
                raise DriftError(f"monitor.{key} must be >= 1; got {getattr(self, key)}")
        if self.embedding_method not in ("encoder", "lsa"):
            raise DriftError(
                f"monitor.embedding.method must be encoder or lsa; got {self.embedding_method!r}"
            )
        if not 0.5 <= self.null_quantile < 1:
            raise DriftError(f"monitor.null.quantile must be in [0.5, 1); got {self.null_quantile}")
        missing = [c for c in CHECKS if c not in self.thresholds]
        if missing:
            raise DriftError(f"monitor.thresholds is missing {missing}")
        for name, value in self.thresholds.items():
            if name not in CHECKS:
                raise DriftError(f"monitor.thresholds.{name} is not a check (checks: {CHECKS})")
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise DriftError(f"monitor.thresholds.{name} must be a number; got {value!r}")

    @classmethod
    def from_config(cls, m: Any) -> DriftConfig:
        """`cfg.monitor` -> DriftConfig."""
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(m, resolve=True) if not isinstance(m, dict) else dict(m)
        ref, emb = d.get("reference", {}), d.get("embedding", {})
        return cls(
            request_log=str(d.get("request_log") or ""),
            window=str(d.get("window", "24h")),
            max_papers=int(d.get("max_papers", 2000)),
            min_papers=int(d.get("min_papers", 100)),
            min_feedback=int(d.get("min_feedback", 30)),
            processed_dir=str(ref.get("processed_dir", "data/processed")),
            reference_split=str(ref.get("split", "train")),
            reference_max_papers=int(ref.get("max_papers", 2000)),
            null_papers=int(ref.get("null_papers", 1000)),
            null_resamples=int(d.get("null", {}).get("resamples", 200)),
            null_quantile=float(d.get("null", {}).get("quantile", 0.99)),
            embedding_method=str(emb.get("method", "encoder")),
            encoder=str(emb.get("encoder", "default")),
            cache_dir=emb.get("cache_dir"),
            batch_size=int(emb.get("batch_size", 64)),
            lsa_dims=int(emb.get("lsa_dims", 100)),
            top_words=int(d.get("vocabulary", {}).get("top_words", 5000)),
            thresholds={k: float(v) for k, v in (d.get("thresholds") or {}).items()},
            seed=int(d.get("seed", 42)),
            output_dir=str(d.get("output_dir", "reports/drift")),
            store=bool(d.get("store", True)),
        )


@dataclass
class Reference:
    """What the model learned from: a seeded sample for the text checks (`texts`), a disjoint
    `null` sample that shows how much the scores move on in-distribution windows, and the
    whole split's label mix."""

    texts: list[str]
    chars: np.ndarray
    null_texts: list[str]
    null_chars: np.ndarray
    label_share: dict[str, float]
    rows: int
    source: str


@dataclass
class Window:
    rows: list[dict[str, Any]]
    since: float | None
    until: float
    spec: str

    @property
    def texts(self) -> list[str]:

        return [model_text(r["title"], r["abstract"]) for r in self.rows if r["title"] is not None]
