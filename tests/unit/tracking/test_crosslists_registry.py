"""The cross-list head travels with its bundle through MLflow and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paperops.config import load_config
from paperops.data.prepare import PrepareConfig, prepare
from paperops.models.multilabel_io import load_cross_lists
from paperops.tracking.promotion import register_candidate
from paperops.tracking.registry import CHAMPION, download_bundle
from paperops.tracking.runs import log_model_bundle, start_run
from paperops.train import train
from tests.conftest import make_records, write_jsonl
from tests.unit.tracking.conftest import CONFIG


def test_a_registered_category_bundle_brings_its_head(store, name, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", make_records({"cs.LG": 40, "math.AG": 30}, seed=5))
    processed = tmp_path / "processed"
    prepare(PrepareConfig(raw_paths=raw, output_dir=processed, label_level="category", min_count=8))
    bundle = tmp_path / "bundle"
    cfg = load_config(["experiment=category", f"train.processed_dir={processed}",
                       f"train.output_dir={bundle}", f"paths.work={tmp_path / 'work'}",
                       "train.track=false", "model.min_df=1", "evaluate.alpha=0.2",
                       "train.cross_lists.min_papers=5", "train.cross_lists.min_df=1"])  # fmt: skip
    train(cfg)
    with start_run(store, run_name="category", config=CONFIG, data_dir=processed) as run:
        run.log_metrics({"val_macro_f1": 0.8})
        uri = log_model_bundle(run, bundle)
    register_candidate(store, run_id=run.run_id, model_uri=uri, score=0.8, name=name)
    served = download_bundle(store, CHAMPION, tmp_path / "served", name=name)
    head, ref = load_cross_lists(served), load_cross_lists(bundle)
    assert head is not None and ref is not None and head.labels == ref.labels
    texts = ["Neural networks\nwe propose a model", "Moduli of curves\nwe prove that"]
    assert np.array_equal(head.predict_proba(texts), ref.predict_proba(texts))
