"""Evaluation like a paper's results section: what a model gets right, how far to trust it, where.

`evaluate_classifier` scores a trained `Classifier` on the test split and writes `metrics.json`,
`per_class.csv`, `confusion_matrix.png`, `reliability.png`, `calibration.json` and a readable
`report.md` into one directory:

- headline numbers (accuracy, top-k accuracy, macro/weighted F1) and a per-class table;
- calibration: a temperature fitted on the calibration split, ECE and NLL on test before/after;
- conformal prediction sets fitted on the temperature-scaled calibration probabilities, with the
  empirical test coverage next to the 1 - alpha target;
- slices by archive, abstract length and year, so an average cannot hide a weak subgroup;
- behavioural tests (`paperops.behaviour`): invariance to harmless edits, directional checks.

`Calibration` (temperature + conformal predictor) is what serving applies to raw logits; it and
this module's import-time dependencies are numpy-only (pandas, matplotlib and the behavioural tests
load lazily inside `evaluate_classifier`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paperops.calibrate import (
    TemperatureScaler,
    check_labels,
    expected_calibration_error,
    nll,
    plot_reliability,
    softmax,
)
from paperops.conformal import METHODS, ConformalPredictor
from paperops.io import atomic_write_text

if TYPE_CHECKING:
    from paperops.data.datamodule import TextSplit
    from paperops.models.base import Classifier

__all__ = [
    "ARTIFACTS",
    "SLICE_MIN_ECE",
    "UNSEEN_LOGIT_GAP",
    "BehaviouralConfig",
    "Calibration",
    "EvalConfig",
    "artifact_paths",
    "classification_metrics",
    "confusion_matrix",
    "evaluate_classifier",
    "finite_logits",
    "fit_calibration",
    "length_bucket",
    "length_bucket_names",
    "plot_confusion_matrix",
    "render_report",
    "slice_metrics",
    "year_of",
]

# A class a model cannot output (tfidf: unseen in training, logit -inf) gets this many logit units
# below the row's lowest finite logit: probability ~e^-50, i.e. zero, but softmax, ECE, NLL and the
# conformal scores stay finite.
UNSEEN_LOGIT_GAP = 50.0
# A slice's ECE is reported only from this many papers up; below it the binning noise dominates.
SLICE_MIN_ECE = 50
# Files evaluate_classifier writes, relative to its output directory (metrics.json last).
ARTIFACTS = (
    "per_class.csv",
    "confusion_matrix.png",
    "reliability.png",
    "calibration.json",
    "report.md",
    "metrics.json",
)


# --- configuration -------------------------------------------------------------------------------


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


# --- logits that a model cannot produce ----------------------------------------------------------


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


# --- calibration: temperature, then conformal sets -----------------------------------------------


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


def fit_calibration(cal_logits: Any, cal_y: Any, cfg: EvalConfig) -> Calibration:
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
    )
    try:
        conformal.fit(scaler.transform(z), y)
    except ValueError as e:
        raise ValueError(
            f"the calibration split is too small for conformal sets ({e}); use a larger "
            "calibration fraction or a larger evaluate.alpha"
        ) from e
    return Calibration(scaler, conformal)


# --- classification metrics ----------------------------------------------------------------------


def confusion_matrix(y_true: Any, y_pred: Any, k: int) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1, support, and which classes are present (true or pred)."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support, (support + predicted) > 0


def classification_metrics(
    probs: np.ndarray, y: np.ndarray, labels: Sequence[str], top_k: int = 3
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro/weighted F1, per-class rows and the confusion matrix.

    Macro F1 averages over the classes present in `y` or the predictions (sklearn's default), so a
    class absent from a small test split neither counts as 0 nor vanishes when it is mispredicted.
    """
    k = len(labels)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, k)
    precision, recall, f1, support, present = _prf(cm)
    n = len(y)
    kk = min(top_k, k)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :kk]  # stable: top-1 == argmax
    return {
        "accuracy": float(np.trace(cm) / n),
        f"top{top_k}_accuracy": float((top == y[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "per_class": [
            {
                "label": lab,
                "name": _display_name(lab),
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "support": int(support[j]),
            }
            for j, lab in enumerate(labels)
        ],
        "confusion_matrix": cm.tolist(),
    }


def _display_name(label: str) -> str:
    from paperops.data.taxonomy import display_name

    try:
        return display_name(label)
    except ValueError:  # a label outside the arXiv taxonomy (custom data) names itself
        return label


def _archive(label: str) -> str:
    from paperops.data.taxonomy import archive_of

    try:
        return archive_of(label)
    except ValueError:
        return label


# --- slices --------------------------------------------------------------------------------------

# New-style ids: YYMM.NNNN(N) since April 2007 (Kaggle dumps sometimes lost the leading zero:
# "704.0001"). Old style: archive[.SUBJ]/YYMMNNN until March 2007.
_NEW_ID = re.compile(r"^(?:arxiv:)?(\d{3,4})\.\d{4,5}(?:v\d+)?$", re.IGNORECASE)
_OLD_ID = re.compile(r"^[a-z][a-z-]*(?:\.[a-z-]+)?/(\d{2})(\d{2})\d{3}(?:v\d+)?$", re.IGNORECASE)
_DATE_YEAR = re.compile(r"^\s*((?:19|20)\d{2})\b")


def year_of(arxiv_id: Any, update_date: Any = None) -> int | None:
    """Submission year from an arXiv id, else update_date's year, else None.

    The id encodes the first version's month, which is what "year" means for a paper;
    update_date is the last revision, a fallback only.
    """
    s = str(arxiv_id).strip() if arxiv_id is not None else ""
    if m := _NEW_ID.match(s):
        yymm = m.group(1).zfill(4)
        if 1 <= int(yymm[2:]) <= 12:
            return 2000 + int(yymm[:2])
    elif m := _OLD_ID.match(s):
        yy, mm = int(m.group(1)), int(m.group(2))
        if 1 <= mm <= 12:
            return 1900 + yy if yy >= 91 else 2000 + yy  # arXiv began in August 1991
    if update_date is None:
        return None
    year = getattr(update_date, "year", None)  # datetime / pandas Timestamp
    if isinstance(year, int):
        return year
    if m := _DATE_YEAR.match(str(update_date)):
        return int(m.group(1))
    return None


def length_bucket_names(edges: Sequence[int]) -> list[str]:
    """Bucket names for word-count edges: [100, 150] -> ["<100", "100-149", ">=150"]."""
    names = [f"<{edges[0]}"]
    names += [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    return [*names, f">={edges[-1]}"]


def length_bucket(n_words: int, edges: Sequence[int]) -> str:
    """The bucket of a word count; an edge belongs to the bucket it starts."""
    return length_bucket_names(edges)[int(np.searchsorted(np.asarray(edges), n_words, "right"))]


def _slice_row(
    value: str, idx: np.ndarray, probs: np.ndarray, y: np.ndarray, n_bins: int
) -> dict[str, Any]:
    n = len(idx)
    row: dict[str, Any] = {"value": value, "n": int(n)}
    if n == 0:
        return {**row, "accuracy": None, "macro_f1": None, "mean_confidence": None, "ece": None}
    p, t = probs[idx], y[idx]
    pred = p.argmax(axis=1)
    *_, f1, support, _ = _prf(confusion_matrix(t, pred, probs.shape[1]))
    return {
        **row,
        "accuracy": float((pred == t).mean()),
        "macro_f1": float(f1[support > 0].mean()),
        "mean_confidence": float(p.max(axis=1).mean()),
        "ece": expected_calibration_error(p, t, n_bins) if n >= SLICE_MIN_ECE else None,
    }


def slice_metrics(
    frame: Any, probs: np.ndarray, y: np.ndarray, labels: Sequence[str], cfg: EvalConfig
) -> dict[str, list[dict[str, Any]]]:
    """Per archive, abstract-length bucket and year: n, accuracy, macro F1, confidence, ECE.

    `probs` are the calibrated (temperature-scaled) test probabilities. A slice's macro F1
    averages over the classes with papers in the slice: a class that is only (wrongly) predicted
    there has F1 0 by construction, and counting it would make an archive slice read as failing
    when it is its neighbours that leak in (that error is already in the true classes' F1). Every
    slicing partitions
    the test split, so each one's n sum to n_test. A slicing whose column the frame lacks is left
    out rather than invented.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, list[str]] = {}
    groups["archive"] = [_archive(labels[j]) for j in y]
    if "abstract" in frame:
        words = [len(str(a).split()) for a in frame["abstract"]]
        groups["abstract_length"] = [length_bucket(w, cfg.length_buckets) for w in words]
    if "id" in frame or "update_date" in frame:
        ids = frame["id"] if "id" in frame else [None] * len(y)
        dates = frame["update_date"] if "update_date" in frame else [None] * len(y)
        years = [year_of(i, d) for i, d in zip(ids, dates, strict=True)]
        groups["year"] = ["unknown" if yr is None else str(yr) for yr in years]
    for name, keys in groups.items():
        arr = np.asarray(keys, dtype=object)
        if name == "abstract_length":
            order = length_bucket_names(cfg.length_buckets)  # empty buckets keep their row
        elif name == "year":
            order = sorted(set(keys), key=lambda v: (v == "unknown", v))
        else:
            order = sorted(set(keys))
        out[name] = [_slice_row(v, np.flatnonzero(arr == v), probs, y, cfg.n_bins) for v in order]
    return out


# --- plots and files -----------------------------------------------------------------------------


def _save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """PNG via a temp file in the same directory and os.replace: never a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report image is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_confusion_matrix(cm: Any, labels: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (each row is recall over predictions) as a PNG.

    Rows are normalised so a rare class reads as clearly as a common one; counts are written in
    the cells while they still fit (k <= 20). Agg canvas, no pyplot state, works headless.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    k = len(labels)
    rows = cm.sum(axis=1, keepdims=True)
    norm = _ratio(cm, np.broadcast_to(rows, cm.shape))
    size = float(np.clip(0.3 * k + 3, 6, 30))
    font = float(np.clip(200 / max(k, 1), 4, 10))
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues", interpolation="nearest")
    ax.set_xticks(range(k), list(labels), rotation=90, fontsize=font)
    ax.set_yticks(range(k), list(labels), fontsize=font)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (n={int(cm.sum())})")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return _save_figure(fig, Path(path), dpi=100)


def _per_class_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["label", "name", "precision", "recall", "f1", "support"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: r[c] for c in cols})
    return buf.getvalue()


def artifact_paths(out_dir: Path, metrics: Mapping[str, Any]) -> list[Path]:
    """Absolute paths of what an evaluation wrote, e.g. to log each one to MLflow."""
    return [Path(out_dir) / name for name in metrics["artifacts"]]


# --- the evaluation ------------------------------------------------------------------------------


def _require(splits: Mapping[str, TextSplit], name: str) -> TextSplit:
    if name not in splits:
        raise ValueError(f"evaluation needs the {name!r} split; got splits {sorted(splits)}")
    split = splits[name]
    if len(split) == 0:
        from paperops.data.datamodule import EmptySplitError

        raise EmptySplitError(
            f"the {name!r} split is empty: nothing to evaluate on; re-run `paperops data "
            "prepare` with fractions that give it some papers"
        )
    return split


def _check_label_order(split: TextSplit, labels: Sequence[str]) -> None:
    """y indexes the data's labels.json; a model with another label order would be scored
    against the wrong columns without a single error, so compare with the frame's label names."""
    if "label" not in split.frame or not len(split):
        return
    named = np.asarray(labels, dtype=object)[np.asarray(split.y)]
    if not (named == split.frame["label"].to_numpy(dtype=object)).all():
        raise ValueError(
            f"the {split.name!r} split's label indices do not match the model's label order; "
            "evaluate a model on the data (labels.json) it was trained on"
        )


def _model_logits(model: Classifier, split: TextSplit, k: int) -> np.ndarray:
    logits = np.asarray(model.logits(split.texts), dtype=np.float64)
    if logits.shape != (len(split), k):
        raise ValueError(
            f"model returned logits of shape {logits.shape} on the {split.name!r} split; "
            f"expected ({len(split)}, {k}) for its {k} labels"
        )
    return logits


def evaluate_classifier(
    model: Classifier,
    splits: Mapping[str, TextSplit],
    out_dir: Path,
    cfg: EvalConfig,
    *,
    run_name: str,
) -> dict[str, Any]:
    """Evaluate on "test" with calibration fitted on "calibration"; write the report files.

    Logits are computed once per split. Returns the metrics dict written to metrics.json; its
    "artifacts" entry lists the files written (relative to out_dir; see `artifact_paths`). The
    "train" split, when given, supplies directional-test vocabulary for labels without curated
    terms.
    """
    from paperops.behaviour import run_behavioural

    cal, test = _require(splits, "calibration"), _require(splits, "test")
    labels = list(model.labels)
    k = len(labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    cal_logits, test_raw = _model_logits(model, cal, k), _model_logits(model, test, k)
    cal_y = check_labels(cal.y, len(cal), k, name="calibration labels")
    y = check_labels(test.y, len(test), k, name="test labels")
    _check_label_order(cal, labels)
    _check_label_order(test, labels)
    calibration = fit_calibration(cal_logits, cal_y, cfg)
    t = calibration.temperature.temperature

    z = finite_logits(test_raw)
    before = softmax(z)
    after, sets = calibration.apply(test_raw)
    sizes = np.array([len(s) for s in sets])
    covered = np.array([yi in s for yi, s in zip(y.tolist(), sets, strict=True)])
    hist = np.bincount(sizes, minlength=k + 1)

    headline = classification_metrics(after, y, labels, cfg.top_k)
    metrics: dict[str, Any] = {
        "run_name": run_name,
        "model_family": getattr(model, "family", type(model).__name__),
        "n_test": len(test),
        "n_calibration": len(cal),
        "labels": labels,
        **{key: v for key, v in headline.items() if key not in ("per_class", "confusion_matrix")},
        "per_class": headline["per_class"],
        "temperature": t,
        "ece_before": expected_calibration_error(before, y, cfg.n_bins),
        "ece_after": expected_calibration_error(after, y, cfg.n_bins),
        "nll_before": nll(z, y),
        "nll_after": nll(z, y, t),
        "n_unreachable_test": int((~np.isfinite(test_raw[np.arange(len(y)), y])).sum()),
        "conformal": {
            "method": cfg.conformal_method,
            "alpha": cfg.alpha,
            "target": 1 - cfg.alpha,
            "coverage": float(covered.mean()),
            "mean_set_size": float(sizes.mean()),
            "empty_fraction": float((sizes == 0).mean()),
            "randomized": bool(cfg.conformal_randomized),
            "allow_empty": bool(cfg.conformal_allow_empty),
            "set_size_histogram": {str(s): int(c) for s, c in enumerate(hist) if c},
            "qhat": calibration.conformal.qhat,
            "n_cal": calibration.conformal.n_cal,
        },
        "confusion_matrix": headline["confusion_matrix"],
        "slices": slice_metrics(test.frame, after, y, labels, cfg),
        "behavioural": run_behavioural(model, test, splits.get("train"), cfg, t),
        "calibration": calibration.to_dict(),
        "config": asdict(cfg),
        "artifacts": list(ARTIFACTS),
    }

    atomic_write_text(out_dir / "per_class.csv", _per_class_csv(metrics["per_class"]))
    plot_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]), labels, out_dir / "confusion_matrix.png"
    )
    plot_reliability(before, after, y, out_dir / "reliability.png", n_bins=cfg.n_bins)
    calibration.save(out_dir / "calibration.json")
    atomic_write_text(out_dir / "report.md", render_report(metrics))
    # allow_nan=False: a NaN would make the file unreadable for strict JSON parsers; fail loudly.
    text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    atomic_write_text(out_dir / "metrics.json", text)  # last: its presence means a complete run
    return metrics


# --- report.md -----------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(m: Mapping[str, Any]) -> str:
    """The results section as Markdown: tables first, then what the numbers mean."""
    top_key = next(key for key in m if re.fullmatch(r"top\d+_accuracy", key))
    top_k = top_key[3:].split("_")[0]
    conf = m["conformal"]
    t = m["temperature"]
    out = [
        f"# Evaluation: {m['run_name']}",
        "",
        f"Model family `{m['model_family']}`, {len(m['labels'])} classes, "
        f"{m['n_test']} test papers; calibration fitted on {m['n_calibration']} held-out papers.",
        "",
        "## Headline",
        "",
        _table(
            ["metric", "value"],
            [
                ["accuracy", _pct(m["accuracy"])],
                [f"top-{top_k} accuracy", _pct(m[top_key])],
                ["macro F1", _fmt(m["macro_f1"])],
                ["weighted F1", _fmt(m["weighted_f1"])],
                [
                    "ECE (before → after temperature)",
                    f"{m['ece_before']:.3f} → {m['ece_after']:.3f}",
                ],
                [
                    "NLL (before → after temperature)",
                    f"{m['nll_before']:.3f} → {m['nll_after']:.3f}",
                ],
                [f"conformal coverage (target {_pct(conf['target'])})", _pct(conf["coverage"])],
                ["mean prediction-set size", _fmt(conf["mean_set_size"], 2)],
            ],
        ),
        "",
        "## Per class",
        "",
        _table(
            ["label", "name", "precision", "recall", "F1", "support"],
            [
                [
                    f"`{r['label']}`",
                    r["name"],
                    _fmt(r["precision"]),
                    _fmt(r["recall"]),
                    _fmt(r["f1"]),
                    r["support"],
                ]
                for r in m["per_class"]
            ],
        ),
        "",
        "![Confusion matrix (row-normalised)](confusion_matrix.png)",
        "",
        "## Calibration",
        "",
        f"A single temperature T = {t:.3f} was fitted on the calibration split by minimising the "
        "negative log-likelihood; probabilities are softmax(logits / T). "
        + (
            "T > 1: the raw scores were over-confident and are softened. "
            if t > 1.05
            else "T < 1: the raw scores were under-confident and are sharpened. "
            if t < 0.95
            else "T ≈ 1: the raw scores were already about right. "
        )
        + f"On the test split the expected calibration error ({m['config']['n_bins']} bins) went "
        f"from {m['ece_before']:.3f} to {m['ece_after']:.3f} and the NLL from "
        f"{m['nll_before']:.3f} to {m['nll_after']:.3f}. Temperature scaling never changes the "
        "predicted class, so accuracy and F1 are the same before and after.",
        "",
        "![Reliability diagram before and after temperature scaling](reliability.png)",
        "",
        "## Conformal prediction sets",
        "",
        f"Split-conformal sets ({conf['method'].upper()}, α = {conf['alpha']}) were fitted on the "
        f"{conf['n_cal']} temperature-scaled calibration papers (q̂ = {_fmt(conf['qhat'], 4)}). "
        f"They promise that the true label is in the set for at least {_pct(conf['target'])} of "
        "papers exchangeable with the calibration split, on average over calibration draws; with "
        "untied scores also at most "
        f"{_pct(min(1.0, conf['target'] + 1 / (conf['n_cal'] + 1)))}. On the test "
        f"split the empirical coverage was {_pct(conf['coverage'])} with "
        f"{conf['mean_set_size']:.2f} labels per set on average."
        + (
            " Every set is a single label: the model's top-1 accuracy on the calibration split "
            "already exceeds the target, so the sets add no labels (q̂ = 0 ties every paper whose "
            "true class ranks first, and coverage can exceed the upper bound)."
            if conf["mean_set_size"] == 1
            else ""
        ),
        "",
        _table(
            ["set size", "papers"],
            [[s, c] for s, c in conf["set_size_histogram"].items()],
        ),
        "",
        "## Slices",
        "",
        "Metrics on subgroups of the test split, with calibrated probabilities. Small slices are "
        f"noisy; ECE is shown only from {SLICE_MIN_ECE} papers up.",
    ]
    titles = {
        "archive": "By archive",
        "abstract_length": "By abstract length (words)",
        "year": "By year (from the arXiv id)",
    }
    for name, rows in m["slices"].items():
        out += [
            "",
            f"### {titles.get(name, name)}",
            "",
            _table(
                [name, "n", "accuracy", "macro F1", "mean confidence", "ECE"],
                [
                    [
                        r["value"],
                        r["n"],
                        _pct(r["accuracy"]),
                        _fmt(r["macro_f1"]),
                        _fmt(r["mean_confidence"]),
                        _fmt(r["ece"]),
                    ]
                    for r in rows
                ],
            ),
        ]
    out += ["", *_behaviour_section(m["behavioural"]), ""]
    return "\n".join(out)


def _behaviour_section(b: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, r in b.get("invariance", {}).items():
        rows.append([name, "invariance", r["n"], _pct(r["pass_rate"]), "–", r["description"]])
    d = b.get("directional")
    if d:
        rows.append(
            [
                "domain_terms",
                "directional",
                d["n"],
                _pct(d["pass_rate"]),
                f"{_fmt(d['mean_delta'], 4)} (Δlog P {_fmt(d.get('mean_delta_log_prob'), 2)})",
                d["description"],
            ]
        )
    out = [
        "## Behavioural tests",
        "",
        f"{b.get('n_examples', 0)} test papers (seed {b.get('seed')}). Invariance: the predicted "
        "label must not change under a harmless edit. Directional: appending strong terms of "
        "another class must raise that class's calibrated probability.",
        "",
        _table(["check", "kind", "n", "pass rate", "mean ΔP", "what changes"], rows),
    ]
    failures = [
        (name, f) for name, r in b.get("invariance", {}).items() for f in r.get("failures", [])
    ]
    if failures:
        out += ["", "Failing examples:", ""]
        out += [f"- {name}: `{f['id']}` {f['before']} → {f['after']}" for name, f in failures]
    return out
