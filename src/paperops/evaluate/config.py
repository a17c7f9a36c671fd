"""The `evaluate` config group as dataclasses: alpha and the conformal method, slices, the
behavioural checks. Read by evaluation and by training (which calibrates with the same settings).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from paperops.uncertainty.conformal import METHODS


@dataclass
class BehaviouralConfig:
    """How many test papers each behavioural check perturbs, and how."""

    n_examples: int = 300
    typo_rate: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.n_examples) < 1:
            raise ValueError(f"behavioural.n_examples must be >= 1; got {self.n_examples}")
        if not 0 <= float(self.typo_rate) <= 1:
            raise ValueError(f"behavioural.typo_rate must be in [0, 1]; got {self.typo_rate}")
        self.n_examples, self.typo_rate, self.seed = (
            int(self.n_examples),
            float(self.typo_rate),
            int(self.seed),
        )


@dataclass
class EvalConfig:
    """The `evaluate` config group minus its paths (model_dir/report_dir belong to the caller)."""

    alpha: float = 0.1
    conformal_method: str = "aps"
    conformal_randomized: bool = True
    conformal_allow_empty: bool = True
    conformal_mondrian: bool = False
    n_bins: int = 15
    top_k: int = 3
    length_buckets: list[int] = field(default_factory=lambda: [100, 150, 200])
    behavioural: BehaviouralConfig = field(default_factory=BehaviouralConfig)

    def __post_init__(self) -> None:
        if not 0 < float(self.alpha) < 1:
            raise ValueError(f"alpha must be in (0, 1); got {self.alpha}")
        if self.conformal_method not in METHODS:
            raise ValueError(
                f"conformal_method must be one of {METHODS}; got {self.conformal_method!r}"
            )
        if int(self.n_bins) < 1 or int(self.top_k) < 1:
            raise ValueError(f"n_bins and top_k must be >= 1; got {self.n_bins}, {self.top_k}")
        edges = [int(e) for e in self.length_buckets]
        if any(e <= 0 for e in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(
                f"length_buckets must be strictly increasing positive word counts; got {edges}"
            )
        if isinstance(self.behavioural, Mapping):
            self.behavioural = BehaviouralConfig(**dict(self.behavioural))
        self.alpha, self.n_bins, self.top_k = float(self.alpha), int(self.n_bins), int(self.top_k)
        self.length_buckets = edges

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EvalConfig:
        """Build from the Hydra `evaluate` group; an unknown key is an error, not dropped."""
        data = dict(cfg)
        data.pop("model_dir", None)
        data.pop("report_dir", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown evaluate config keys {unknown}; known: {sorted(known)}")
        if "behavioural" in data:
            beh = dict(data["behavioural"])
            bad = sorted(set(beh) - {f.name for f in fields(BehaviouralConfig)})
            if bad:
                raise ValueError(f"unknown evaluate.behavioural config keys {bad}")
            data["behavioural"] = BehaviouralConfig(**beh)
        if "length_buckets" in data:
            data["length_buckets"] = list(data["length_buckets"])
        return cls(**data)
