"""What serving applies to raw logits: a fitted temperature plus a conformal predictor.

`Calibration` is written next to every trained bundle (`calibration.json`) and loaded by the
predictor, the export parity check and the pyfunc; `fit_calibration` fits both on the
calibration split, temperature first (sets built on calibrated probabilities adapt better).
numpy only, so a serve-only install loads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from paperops.io import atomic_write_text
from paperops.uncertainty.calibrate import (
    TemperatureScaler,
    check_labels,
)
from paperops.uncertainty.conformal import ConformalPredictor

if TYPE_CHECKING:
    pass


# A class a model cannot output (tfidf: unseen in training, logit -inf) gets this many logit units
# below the row's lowest finite logit: probability ~e^-50, i.e. zero, but softmax, ECE, NLL and the
# conformal scores stay finite.
UNSEEN_LOGIT_GAP = 50.0


def finite_logits(logits: Any) -> np.ndarray:
    """Replace -inf (a class the model cannot output) by a floor far below the row's other logits.

    softmax would give such a class exactly 0 anyway; a finite floor keeps that while letting the
    shared checks (finite inputs) and log-probabilities work. NaN, +inf or an all -inf row are
    model bugs and raise.
    """
    z = np.array(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (n, k); got {z.shape}")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("logits contain NaN or +inf: the model produced invalid scores")
    neg = np.isneginf(z)
    if neg.any():
        finite_rows = (~neg).any(axis=1)
        if not finite_rows.all():
            raise ValueError("a row of logits is entirely -inf: the model scores no class")
        floor = np.where(neg, np.inf, z).min(axis=1, keepdims=True) - UNSEEN_LOGIT_GAP
        z = np.where(neg, floor, z)
    return z


@dataclass
class Calibration:
    """Temperature + conformal predictor fitted on the calibration split; JSON, never pickle."""

    temperature: TemperatureScaler
    conformal: ConformalPredictor

    def apply(self, logits: Any, u: Any = None) -> tuple[np.ndarray, list[list[int]]]:
        """Calibrated probabilities and a conformal label set (class indices) per row.

        `u`: per-row tie-breakers for randomized APS (see ConformalPredictor.predict_sets).
        """
        probs = self.temperature.transform(finite_logits(logits))
        return probs, self.conformal.predict_sets(probs, u)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "calibration",
            "version": 1,
            "temperature": self.temperature.to_dict(),
            "conformal": self.conformal.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        if d.get("kind") != "calibration":
            raise ValueError(f"not a calibration record: kind={d.get('kind')!r}")
        conformal = ConformalPredictor.from_dict(dict(d["conformal"]))
        if conformal.qhat is None:
            raise ValueError("calibration record has an unfitted conformal predictor (qhat null)")
        return cls(TemperatureScaler.from_dict(dict(d["temperature"])), conformal)

    def save(self, path: Path) -> Path:
        """Write atomically as JSON (e.g. `calibration.json` next to a model bundle)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text()))


class ConformalSettings(Protocol):
    """What `fit_calibration` reads of a config (`evaluate.EvalConfig` has these fields)."""

    conformal_method: str
    alpha: float
    conformal_randomized: bool
    conformal_allow_empty: bool
    conformal_mondrian: bool


def fit_calibration(cal_logits: Any, cal_y: Any, cfg: ConformalSettings) -> Calibration:
    """Fit T on the calibration split, then conformal sets on the T-scaled probabilities.

    The order matters: sets built on calibrated probabilities are as valid as any (validity needs
    only exchangeability) but adapt better, since APS ranks by those probabilities. Rows whose true
    class the model cannot output (logit -inf) are left out of the temperature fit, which no T
    could help and which would otherwise drag T to its bound; they stay in the conformal fit,
    because the coverage guarantee needs every calibration row.
    """
    raw = np.asarray(cal_logits, dtype=np.float64)
    z = finite_logits(raw)
    y = check_labels(cal_y, *z.shape, name="calibration labels")
    reachable = np.isfinite(raw[np.arange(len(y)), y])
    scaler = TemperatureScaler()
    if reachable.any():
        scaler.fit(z[reachable], y[reachable])
    conformal = ConformalPredictor(
        method=cfg.conformal_method,
        alpha=cfg.alpha,
        randomized=bool(cfg.conformal_randomized),
        allow_empty=bool(cfg.conformal_allow_empty),
        mondrian=bool(getattr(cfg, "conformal_mondrian", False)),
    )
    try:
        conformal.fit(scaler.transform(z), y)
    except ValueError as e:
        raise ValueError(
            f"the calibration split is too small for conformal sets ({e}); use a larger "
            "calibration fraction or a larger evaluate.alpha"
        ) from e
    return Calibration(scaler, conformal)
