"""What an explanation is (the shapes the API, `paperops predict` and the web page show) and the
edits the faithfulness check makes with it. The explainers are in `explain` (dispatch,
occlusion) and `explain_linear` (tfidf, hybrid); this module imports nothing of paperops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

FIELDS = ("title", "abstract")
Paper = tuple[str, str]  # (title, abstract) as the client sent them


class CannotExplain(ValueError):
    """This model cannot be explained here (the message names the model and the reason)."""


@dataclass(frozen=True)
class Span:
    """Where a term occurs: character offsets [start, end) in the title or abstract as sent."""

    field: str
    start: int
    end: int


@dataclass(frozen=True)
class Term:
    """One explained term (a word, a word pair or a sentence): `weight` is its contribution to
    the label's score (linear: logit units; occlusion: the probability it removes). `field`,
    `start`, `end` are its first occurrence; `spans` every occurrence (for highlighting)."""

    text: str
    weight: float
    field: str
    start: int
    end: int
    spans: list[Span]


@dataclass(frozen=True)
class Part:
    """A share of a linear score that is not a listed term (intercept, embedding block, ...)."""

    name: str
    weight: float


@dataclass(frozen=True)
class Explanation:
    method: str
    label: str
    score: float  # linear: the label's logit; occlusion: its calibrated probability
    terms: list[Term]
    parts: list[Part] = field(default_factory=list)
    reason: str | None = None  # why `terms` is empty

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(info: Any) -> str:
    """'model 'x' v3 (family tfidf, runtime sklearn)' from a ModelInfo: errors name the model."""
    return f"model {info.name!r} v{info.version} (family {info.family}, runtime {info.runtime})"


def without(paper: Paper, spans: Sequence[Span]) -> Paper:
    """`paper` with the text of `spans` removed (overlaps allowed), each cut leaving one space:
    what "deleting a term" means in the faithfulness check."""
    out = []
    for name, text in zip(FIELDS, paper, strict=True):
        cuts = sorted((s.start, s.end) for s in spans if s.field == name)
        parts, pos = [], 0
        for s, e in cuts:
            if parts and s <= pos:  # overlaps (or touches) the previous cut: extend it
                pos = max(pos, e)
                continue
            parts.append(text[pos:s])
            pos = e
        parts.append(text[pos:])
        out.append(" ".join(parts))
    return out[0], out[1]
