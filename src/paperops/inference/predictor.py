"""What the API, `paperops predict` and the benchmarks run: a runtime that scores texts, wrapped
in a `Predictor` that turns scores into calibrated answers.

A *runtime* only maps texts to raw logits (one column per label):
- `onnx` / `onnx-int8`: an exported encoder model in ONNX Runtime (`paperops export`), the
  serving path for the neural families (see `paperops.inference.onnx_classifier`);
- `sklearn`: a tfidf bundle (skops), served as is: it is already a few sparse dot products;
- `torch`: any bundle through `load_classifier` (the fallback, and the naive baseline).

The `Predictor` adds what every runtime shares and training fitted: temperature scaling, the
conformal prediction set and human-readable names. Randomized APS draws its tie-breaker from a
hash of each text, so a paper gets the same answer whichever micro-batch it lands in.

A bundle trained with a cross-list head (`<bundle>/crosslists/`, `models.multilabel`) also
answers, on request, the other categories the paper belongs in. With a tfidf or hybrid primary
the head shares its vectorizer, and one `transform` per batch feeds both (the runtime's
`logits_with_words`): the head then costs one sparse product, not a second tokenization.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from paperops.data.taxonomy import archive_name, archive_of, label_name
from paperops.data.text import model_text
from paperops.inference.onnx_classifier import OnnxRuntime, read_export_meta
from paperops.models.base import (
    CALIBRATION_FILE,
    EXPORT_FILE,
    NEURAL_FAMILIES,
    SKLEARN_FAMILIES,
    ModelLoadError,
    load_calibration,
    load_classifier,
    read_meta,
)
from paperops.models.multilabel import CrossListHead
from paperops.models.multilabel_io import load_cross_lists
from paperops.models.process import set_torch_threads
from paperops.uncertainty.calibrate import softmax
from paperops.uncertainty.calibration import finite_logits

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "onnx-int8", "sklearn", "torch")


@runtime_checkable
class Runtime(Protocol):
    """Texts -> (n, k) float logits aligned with `labels`. Must be safe to call from one worker
    thread at a time (the batcher guarantees that); `kind` names the backend for /v1/model."""

    kind: str
    labels: list[str]

    def logits(self, texts: Sequence[str]) -> np.ndarray: ...


class ClassifierRuntime:
    """Any bundle loaded with `load_classifier`: `sklearn` for tfidf and hybrid, else `torch`."""

    def __init__(self, model: Any, threads: int | None = None) -> None:
        self.model = model
        self.labels = list(model.labels)
        self.kind = "sklearn" if model.family in SKLEARN_FAMILIES else "torch"
        if self.kind == "torch" and threads:
            set_torch_threads(threads)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.logits(list(texts)), dtype=np.float64)

    @property
    def shares_words(self) -> bool:
        """The model can hand out the TF-IDF rows it scored (tfidf, hybrid)."""
        return hasattr(self.model, "logits_with_words")

    def logits_with_words(self, texts: Sequence[str]) -> tuple[np.ndarray, Any]:
        """Logits and the model's TF-IDF rows of `texts`, from one tokenization."""
        logits, words = self.model.logits_with_words(list(texts))
        return np.asarray(logits, dtype=np.float64), words


# --- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelScore:
    label: str
    name: str
    probability: float


@dataclass(frozen=True)
class CrossListScore:
    """A category to cross-list a paper in: its membership probability (the head's, Platt
    calibrated per label; they need not sum to 1 across labels) and its archive."""

    label: str
    name: str
    probability: float
    archive: str


@dataclass(frozen=True)
class PaperPrediction:
    """One paper's answer: the top label, its calibrated probability, the top-k list and the
    conformal set (may be empty: no label is confident enough at the target coverage).

    `archive` is the top label's archive with the summed probability of that archive's labels:
    a category model answers both levels and the two never disagree (for an archive model it
    is the top label itself). None for labels outside the arXiv taxonomy."""

    label: str
    name: str
    confidence: float
    top: list[LabelScore]
    prediction_set: list[LabelScore]
    archive: LabelScore | None = None
    # only when asked for (None otherwise): the categories, besides `label`, whose head
    # probability reached their threshold, most probable first
    cross_lists: list[CrossListScore] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON: `cross_lists` only when it was asked for (old readers see the old shape)."""
        out = asdict(self)
        if self.cross_lists is None:
            del out["cross_lists"]
        return out


@dataclass(frozen=True)
class ModelInfo:
    """What is being served: shown at /v1/model, in the `paperops_model_info` metric and logged
    with every request."""

    name: str
    version: str
    family: str
    runtime: str
    source: str
    n_labels: int
    temperature: float | None = None
    coverage_target: float | None = None
    conformal_method: str | None = None
    loaded_at: float = field(default_factory=time.time)
    export: dict[str, Any] | None = None
    cross_lists: dict[str, Any] | None = None  # the head's settings when the bundle has one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArchiveRollup:
    """Label probabilities summed per archive: P(archive) = sum of its labels' probabilities."""

    archives: list[str]
    names: list[str]
    index: np.ndarray  # label j belongs to archives[index[j]]

    @classmethod
    def for_labels(cls, labels: Sequence[str]) -> ArchiveRollup | None:
        """None when a label is outside the arXiv taxonomy (a custom label set has no archives)."""
        try:
            of = [archive_of(lab) for lab in labels]
        except ValueError:
            return None
        archives = sorted(set(of))
        pos = {a: i for i, a in enumerate(archives)}
        return cls(archives, [archive_name(a) for a in archives], np.array([pos[a] for a in of]))

    def sums(self, probs: np.ndarray) -> np.ndarray:
        """(n, k) label probabilities -> (n, n_archives)."""
        out = np.zeros((probs.shape[0], len(self.archives)))
        np.add.at(out.T, self.index, probs.T)
        return out

    def archive_scores(self, probs: np.ndarray, top: np.ndarray) -> list[LabelScore]:
        """Per row, the archive of the top label with its summed probability."""
        sums = self.sums(probs)
        a = self.index[top]
        return [
            LabelScore(self.archives[j], self.names[j], round(float(sums[i, j]), 6))
            for i, j in enumerate(a.tolist())
        ]


def text_uniforms(texts: Sequence[str]) -> np.ndarray:
    """One uniform in [0, 1) per text from a hash of the text: deterministic per paper."""
    out = np.empty(len(texts), dtype=np.float64)
    for i, t in enumerate(texts):
        h = hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


class NoCrossLists(ValueError):
    """Cross-lists were asked of a model trained without a cross-list head."""


CrossListRows = bool | Sequence[bool]  # every text, or a mask: which texts want cross-lists


class Predictor:
    """A runtime + the bundle's calibration (+ its cross-list head): the single object serving
    code calls."""

    def __init__(
        self,
        runtime: Runtime,
        calibration: Any | None,
        info: ModelInfo,
        cross_lists: CrossListHead | None = None,
    ) -> None:
        self.runtime = runtime
        self.calibration = calibration  # paperops.evaluate.Calibration, or None (uncalibrated)
        self.info = info
        self.cross_lists = cross_lists
        self.labels = list(runtime.labels)
        self.names = [label_name(lab) for lab in self.labels]
        self.rollup = ArchiveRollup.for_labels(self.labels)
        # one tokenization for the model and the head (see the module doc)
        self._shared_words = bool(
            cross_lists is not None
            and cross_lists.shared
            and getattr(runtime, "shares_words", False)
        )

    def probabilities(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[int]]]:
        """Calibrated probabilities (n, k) and conformal sets (class indices) for model texts."""
        return self._calibrated(self.runtime.logits(texts), texts)

    def _calibrated(
        self, logits: np.ndarray, texts: Sequence[str]
    ) -> tuple[np.ndarray, list[list[int]]]:
        if self.calibration is None:
            probs = softmax(finite_logits(logits))
            return probs, [[int(i)] for i in probs.argmax(axis=1)]
        return self.calibration.apply(logits, text_uniforms(texts))

    def _cross_rows(self, cross_lists: CrossListRows, n: int) -> list[int]:
        if isinstance(cross_lists, bool):
            rows = list(range(n)) if cross_lists else []
        else:
            if len(cross_lists) != n:
                raise ValueError(f"cross_lists mask has {len(cross_lists)} entries for {n} texts")
            rows = [i for i, want in enumerate(cross_lists) if want]
        if rows and self.cross_lists is None:
            raise NoCrossLists(
                f"model {self.info.name} v{self.info.version} ({self.info.family}) was trained "
                "without a cross-list head: it answers one label per paper (train it with "
                "experiment=category, train.cross_lists.enabled=true)"
            )
        return rows

    def predict_texts(
        self, texts: Sequence[str], top_k: int = 3, cross_lists: CrossListRows = False
    ) -> list[PaperPrediction]:
        """Answers for model texts; `cross_lists` (all, or a per-text mask) adds the suggested
        cross-lists (NoCrossLists when the model has no head)."""
        if not texts:
            return []
        rows = self._cross_rows(cross_lists, len(texts))
        words = None
        if rows and self._shared_words:
            logits, words = self.runtime.logits_with_words(texts)  # type: ignore[attr-defined]
        else:
            logits = self.runtime.logits(texts)
        probs, sets = self._calibrated(logits, texts)
        k = max(1, min(int(top_k), len(self.labels)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        archives = self.rollup.archive_scores(probs, order[:, 0]) if self.rollup else None
        out = []
        for i, (row, top_idx, members) in enumerate(zip(probs, order, sets, strict=True)):
            top = [self._score(int(j), row) for j in top_idx]
            out.append(
                PaperPrediction(
                    label=top[0].label,
                    name=top[0].name,
                    confidence=top[0].probability,
                    top=top,
                    prediction_set=[self._score(int(j), row) for j in members],
                    archive=None if archives is None else archives[i],
                )
            )
        if rows:
            self._add_cross_lists(out, texts, rows, words)
        return out

    def _add_cross_lists(
        self, out: list[PaperPrediction], texts: Sequence[str], rows: list[int], words: Any
    ) -> None:
        head = self.cross_lists
        if head is None:  # pragma: no cover - _cross_rows refused already
            raise NoCrossLists("no cross-list head")
        if words is not None:
            x = words if len(rows) == len(texts) else words[rows]
        else:
            if head.vectorizer is None:
                raise RuntimeError("cross-list head is not trained: load() it first")
            x = head.vectorizer.transform([texts[i] for i in rows])
        suggested = head.suggest_from_proba(
            head.predict_proba_features(x), [out[i].label for i in rows]
        )
        for i, found in zip(rows, suggested, strict=True):
            primary = out[i].label
            listed = [
                CrossListScore(s.label, s.name, round(float(s.probability), 6), s.archive)
                for s in found
                if s.label != primary and s.probability is not None
            ]
            out[i] = replace(out[i], cross_lists=listed)

    def predict_papers(
        self,
        papers: Sequence[tuple[str, str]],
        top_k: int = 3,
        cross_lists: CrossListRows = False,
    ) -> list[PaperPrediction]:
        """(title, abstract) pairs, joined exactly as in training (`model_text`)."""
        return self.predict_texts([model_text(t, a) for t, a in papers], top_k, cross_lists)

    def _score(self, j: int, row: np.ndarray) -> LabelScore:
        return LabelScore(self.labels[j], self.names[j], round(float(row[j]), 6))


# --- loading ---------------------------------------------------------------------------------


def _load_calibration(directory: Path) -> Any | None:
    calibration = load_calibration(directory)
    if calibration is None:
        log.warning(
            "%s has no %s: serving uncalibrated softmax scores", directory, CALIBRATION_FILE
        )
    return calibration


def load_predictor(
    model_dir: Path,
    *,
    runtime: str = "auto",
    threads: int | None = None,
    name: str | None = None,
    version: str | None = None,
    source: str | None = None,
) -> Predictor:
    """Load a bundle or an export directory for serving.

    `auto` picks ONNX (int8 when the export has it) for an export directory, sklearn for a tfidf
    bundle and torch for a neural bundle that was not exported (with a warning: run
    `paperops export`). Any error is a `ModelLoadError` naming the file and the fix.
    """
    model_dir = Path(model_dir)
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"runtime must be one of {RUNTIMES}; got {runtime!r}")
    meta = read_meta(model_dir)
    family = str(meta["family"])
    export_meta: dict[str, Any] | None = None
    if (model_dir / EXPORT_FILE).is_file():
        export_meta = read_export_meta(model_dir)
    exported_as = None if export_meta is None else str(export_meta["runtime"])
    if exported_as not in (None, "onnx", "sklearn"):
        raise ModelLoadError(
            f"{model_dir / EXPORT_FILE}: unknown runtime {exported_as!r}; re-export with this "
            "paperops version (`paperops export`)"
        )
    if runtime == "auto":
        if exported_as == "onnx":
            # int8 when export.json lists one (a listed but missing file then fails loading
            # with a clear error instead of silently serving fp32)
            meta_x = export_meta or {}
            has_int8 = bool(meta_x.get("int8")) and bool((meta_x.get("files") or {}).get("int8"))
            runtime = "onnx-int8" if has_int8 else "onnx"
        elif exported_as == "sklearn" or family in SKLEARN_FAMILIES:
            runtime = "sklearn"
        else:
            runtime = "torch"
            if family in NEURAL_FAMILIES:
                log.warning(
                    "%s is a %s bundle without an ONNX export: serving through PyTorch "
                    "(slower); run `paperops export` for the fast path",
                    model_dir,
                    family,
                )
    if runtime in ("onnx", "onnx-int8"):
        if exported_as != "onnx":
            what = "a tfidf export (served with sklearn)" if exported_as else "a plain bundle"
            raise ModelLoadError(
                f"runtime {runtime!r} needs an ONNX export directory ({EXPORT_FILE}); "
                f"{model_dir} is {what}"
                + ("" if exported_as else f": run `paperops export --model {model_dir}`")
            )

        rt: Runtime = OnnxRuntime.load(model_dir, int8=runtime == "onnx-int8", threads=threads)
    else:
        if runtime == "sklearn" and family not in SKLEARN_FAMILIES:
            raise ModelLoadError(
                f"runtime 'sklearn' serves {' and '.join(SKLEARN_FAMILIES)} bundles; "
                f"{model_dir} is {family}"
            )
        if exported_as == "onnx":
            src = (export_meta or {}).get("source", {}).get("bundle", "the source bundle")
            raise ModelLoadError(
                f"{model_dir} is an ONNX export: runtime {runtime!r} needs the bundle itself "
                f"({src}); serve this directory with runtime onnx / onnx-int8 / auto"
            )
        rt = ClassifierRuntime(load_classifier(model_dir), threads=threads)
    calibration = _load_calibration(model_dir)
    head = _load_head(model_dir, rt)
    info = ModelInfo(
        name=name or str(meta.get("registered_model") or model_dir.name),
        version=str(version or meta.get("version") or "local"),
        family=family,
        runtime=rt.kind,
        source=source or str(model_dir),
        n_labels=len(rt.labels),
        temperature=None if calibration is None else calibration.temperature.temperature,
        coverage_target=None if calibration is None else 1 - calibration.conformal.alpha,
        conformal_method=None if calibration is None else calibration.conformal.method,
        export=export_meta,
        cross_lists=None if head is None else head_summary(head),
    )
    return Predictor(rt, calibration, info, head)


def _load_head(model_dir: Path, runtime: Runtime) -> CrossListHead | None:
    """The bundle's cross-list head (None without one), sharing the loaded model's vectorizer
    when it can."""
    model = getattr(runtime, "model", None)
    return load_cross_lists(model_dir, vectorizer=getattr(model, "vectorizer", None))


def head_summary(head: CrossListHead) -> dict[str, Any]:
    """What /v1/model says about a cross-list head."""
    return {
        "labels": len(head.labels),
        "precision": head.config.precision,
        "max_labels": head.config.max_labels,
        "shared_features": head.shared,
    }
