"""The evaluation report: report.md, per_class.csv, confusion_matrix.png and the markdown tables,
written from the metrics dict so the report and metrics.json can never disagree.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paperops.evaluate.metrics import _ratio
from paperops.evaluate.slices import SLICE_MIN_ECE

if TYPE_CHECKING:
    pass


# Files evaluate_classifier writes, relative to its output directory (metrics.json last).
ARTIFACTS = (
    "per_class.csv",
    "confusion_matrix.png",
    "reliability.png",
    "calibration.json",
    "report.md",
    "metrics.json",
)


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


def _worst_class_row(conf: Mapping[str, Any]) -> list[list[str]]:
    """The class the sets cover least: marginal coverage can hide one they keep missing."""
    per = {k: v for k, v in (conf.get("per_class_coverage") or {}).items() if v is not None}
    if not per:
        return []
    worst = min(per, key=lambda k: per[k])
    return [[f"worst-class coverage ({worst})", _pct(per[worst])]]


def _coverage_note(conf: Mapping[str, Any]) -> list[str]:
    """Which conformal variant ran and the classes below target, so a reader sees both."""
    per = {k: v for k, v in (conf.get("per_class_coverage") or {}).items() if v is not None}
    below = sorted((v, k) for k, v in per.items() if v < conf["target"] - 0.05)
    kind = (
        "Class-conditional (Mondrian): one q̂ per class, so the promise holds for every class "
        "with enough calibration papers."
        if conf.get("mondrian")
        else "Marginal: the promise is on average over papers, not per class."
    )
    if below:
        kind += (
            " Classes more than 5 points below target: "
            + ", ".join(f"`{k}` {_pct(v)}" for v, k in below)
            + "."
        )
    return ["", kind] if per else []


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
                *_worst_class_row(conf),
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
        *_coverage_note(conf),
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
