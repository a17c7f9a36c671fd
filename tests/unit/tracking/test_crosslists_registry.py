"""The cross-list head travels with its bundle through MLflow and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paperops.models.multilabel_io import load_cross_lists
from paperops.tracking.promotion import register_candidate
from paperops.tracking.registry import CHAMPION, download_bundle
from paperops.tracking.runs import log_model_bundle, start_run
from tests.unit.tracking.conftest import CONFIG


def test_a_registered_category_bundle_brings_its_head(
    store, name, category_bundle: Path, tmp_path: Path
) -> None:
    bundle, processed = category_bundle, category_bundle.parent / "processed"
    with start_run(store, run_name="category", config=CONFIG, data_dir=processed) as run:
        run.log_metrics({"val_macro_f1": 0.8})
        uri = log_model_bundle(run, bundle)
    register_candidate(store, run_id=run.run_id, model_uri=uri, score=0.8, name=name)
    served = download_bundle(store, CHAMPION, tmp_path / "served", name=name)
    head, ref = load_cross_lists(served), load_cross_lists(bundle)
    assert head is not None and ref is not None and head.labels == ref.labels
    texts = ["Neural networks\nwe propose a model", "Moduli of curves\nwe prove that"]
    assert np.array_equal(head.predict_proba(texts), ref.predict_proba(texts))
    # the pyfunc answers the API's cross-lists too, in arXiv's space-separated form
    import mlflow
    import pandas as pd

    from paperops.inference.predictor import load_predictor
    from tests.conftest import CATEGORY_COUNTS, make_records

    frame = pd.DataFrame(make_records(CATEGORY_COUNTS, seed=12)[:10])[["title", "abstract"]]
    out = mlflow.pyfunc.load_model(uri).predict(frame)
    pairs = list(zip(frame.title, frame.abstract, strict=True))
    want = load_predictor(bundle).predict_papers(pairs, 3, cross_lists=True)
    assert list(out["label"]) == [w.label for w in want]
    joined = [" ".join(c.label for c in w.cross_lists or ()) for w in want]
    assert list(out["cross_lists"]) == joined and any(joined)
    schema = mlflow.models.get_model_info(uri).signature.outputs.input_names()
    assert schema[-1] == "cross_lists"
