"""prepare + validate on the real 113k-paper dev file, with the counts PROVENANCE.md documents."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from paperops.config import load_config
from paperops.data.prepare import PrepareConfig, prepare
from paperops.data.sources import read_mqp_csv
from paperops.data.validate import SPLITS, validate_processed

pytestmark = pytest.mark.integration

# Primary-category counts per archive from PROVENANCE.md, after mapping legacy names and the
# cs.SY -> eess.SY alias (one paper moves from cs to eess).
EXPECTED_ARCHIVE_COUNTS = {
    "cs": 41786,
    "cond-mat": 25769,
    "quant-ph": 21235,
    "astro-ph": 10093,
    "math": 3252,
    "gr-qc": 3213,
    "eess": 2837,
    "hep-th": 2191,
    "physics": 962,
    "math-ph": 582,
    "hep-ph": 295,
    "q-bio": 231,
    "nlin": 219,
    "stat": 217,
    "nucl-th": 138,
}
RARE_ARCHIVES = {"hep-ex": 35, "q-fin": 28, "nucl-ex": 26, "hep-lat": 20, "econ": 11}


def _prepare(arxiv_path: Path, out: Path, *overrides: str) -> PrepareConfig:
    # the dev file alone and uncapped: the counts below are the dev file's
    args = [f"data.raw_paths={arxiv_path}", f"data.output_dir={out}", "data.max_per_class=null"]
    d = load_config([*args, *overrides]).data
    cfg = PrepareConfig.from_config(d)
    prepare(cfg)
    return cfg


@pytest.fixture(scope="module")
def archive_dir(arxiv_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "processed"
    _prepare(arxiv_path, out)
    return out


def test_archive_level_counts(archive_dir: Path) -> None:
    meta = json.loads((archive_dir / "labels.json").read_text())
    stats = json.loads((archive_dir / "stats.json").read_text())
    counts = {e["label"]: e["count"] for e in meta["labels"]}
    assert counts == EXPECTED_ARCHIVE_COUNTS
    assert stats["rows_read"] == 113_140
    assert stats["rare_classes"] == RARE_ARCHIVES
    assert stats["dropped"] == {"rare_class": sum(RARE_ARCHIVES.values())}
    assert stats["rows_out"] == sum(EXPECTED_ARCHIVE_COUNTS.values())
    assert meta["raw_files"][0]["sha256"].startswith("83826aa7ce4c9095")


def test_splits_stratified_without_overlap(archive_dir: Path) -> None:
    frames = {s: pd.read_parquet(archive_dir / f"{s}.parquet") for s in SPLITS}
    total = sum(len(f) for f in frames.values())
    for name, frac in {"train": 0.7, "val": 0.1, "calibration": 0.1, "test": 0.1}.items():
        assert abs(len(frames[name]) / total - frac) < 0.002
        per_class = frames[name]["label"].value_counts()
        for label, n in EXPECTED_ARCHIVE_COUNTS.items():
            assert abs(per_class[label] - n * frac) <= 1.0, (name, label)
    ids = [set(f["id"]) for f in frames.values()]
    assert sum(len(s) for s in ids) == len(set().union(*ids)) == total


def test_validation_passes_on_real_data(archive_dir: Path) -> None:
    d = load_config().data
    report = validate_processed(
        archive_dir,
        dict(d.limits),
        min_rows_total=d.validation.min_rows_total,
        min_train_rows_per_class=d.validation.min_train_rows_per_class,
    )
    assert report.ok, report.render()
    assert report.rows == sum(EXPECTED_ARCHIVE_COUNTS.values())


def test_category_level_drops_archive_only_labels(arxiv_path: Path, tmp_path: Path) -> None:
    _prepare(arxiv_path, tmp_path / "cat", "data.label_level=category")
    stats = json.loads((tmp_path / "cat" / "stats.json").read_text())
    meta = json.loads((tmp_path / "cat" / "labels.json").read_text())
    # archive-only primaries in the file: cond-mat, astro-ph, physics, math, nlin, cs, q-bio
    assert stats["dropped"]["coarse_label_at_category_level"] == (
        24258 + 438 + 324 + 133 + 113 + 70 + 15
    )
    # reconstructed labels (PROVENANCE caveats) never become categories: every non-coarse row of
    # rocksonchang/arXiv-metadata (quant-ph 21,004, hep-th 839, ...) is dropped by source
    assert stats["dropped"]["archive_only_source"] == 23096
    assert set(stats["per_source"]).isdisjoint(meta["archive_only_sources"])
    labels = {e["label"] for e in meta["labels"]}
    assert {"cs.CV", "cs.CL", "quant-ph", "astro-ph.GA", "math.NT"} <= labels
    assert "nlin.CD" not in labels  # its papers were old chao-dyn ids of the reconstructed set
    assert "cond-mat" not in labels and "chao-dyn" not in labels
    assert all(e["count"] >= 50 for e in meta["labels"])


def test_medical_question_pairs_read(mqp_path: Path) -> None:
    rows = read_mqp_csv(mqp_path)
    assert len(rows) == 3048
    assert sum(r["label"] for r in rows) == 1524
    assert {r["dr_id"] for r in rows} == set(range(1, 12))
