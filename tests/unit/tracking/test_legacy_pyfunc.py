"""MLflow models registered before the layered layout keep loading after it.

Their pyfunc code (models-from-code) was copied into each logged model and imports the old
paths `paperops.calibrate`, `paperops.generation`, `paperops.models.base`, `paperops.models.lm`
and `paperops.data.text`. `tests/fixtures/legacy_pyfunc/` holds those two files exactly as the
last release logged them; a model logged with them must load and answer like today's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from paperops.data.datamodule import load_splits_for_model
from paperops.models.base import load_classifier
from paperops.models.tfidf import TfidfClassifier, TfidfConfig
from paperops.tracking.runs import setup_mlflow, start_run
from paperops.uncertainty.calibrate import softmax

mlflow = pytest.importorskip("mlflow")

LEGACY = Path(__file__).resolve().parents[2] / "fixtures" / "legacy_pyfunc"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("legacy-store")
    cfg = {
        "name": "mlflow",
        "tracking_uri": f"sqlite:///{root}/mlflow.db",
        "artifact_location": str(root / "artifacts"),
        "experiment_name": "paperops-legacy",
        "registered_model": "paperops-classifier",
        "wandb": None,
    }
    setup_mlflow(cfg)
    return cfg


def log_legacy(
    store: dict[str, Any], code: Path, bundle: Path, example: dict, params: dict | None = None
) -> str:
    """What the last release's `log_model_bundle` did, with its pyfunc file (a signature with
    the generation params, without which MLflow drops the params a caller passes)."""
    frame = pd.DataFrame(example)
    signature = mlflow.models.infer_signature(frame, params=params) if params else None
    with start_run(store, run_name=code.stem, config={"seed": 0}):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts={"bundle": str(bundle)},
            input_example=frame,
            signature=signature,
            pip_requirements=["paperops"],  # as the old code: skip MLflow's slow inference
        )
    return str(info.model_uri)


def test_a_classifier_logged_with_the_old_pyfunc_loads_and_predicts(
    store: dict[str, Any], _prepared_once: Path, tmp_path: Path
) -> None:
    splits, labels = load_splits_for_model(_prepared_once, ["train", "test"])
    model = TfidfClassifier(labels, TfidfConfig(min_df=1, classifier="logreg"))
    model.fit(splits["train"].texts, [labels[i] for i in splits["train"].y])
    bundle = model.save(tmp_path / "tfidf")
    (bundle / "calibration.json").write_text(
        json.dumps({"temperature": {"kind": "temperature", "temperature": 2.0}, "conformal": {}})
    )
    source = (LEGACY / "mlflow_pyfunc.py").read_text()
    assert "from paperops.calibrate import" in source  # the old path this test guards

    uri = log_legacy(
        store, LEGACY / "mlflow_pyfunc.py", bundle, {"title": ["A"], "abstract": ["B"]}
    )
    test = pd.read_parquet(_prepared_once / "test.parquet")
    out = mlflow.pyfunc.load_model(uri).predict(test[["title", "abstract"]])

    clf = load_classifier(bundle)
    texts = [f"{t.strip()}\n{a.strip()}" for t, a in zip(test.title, test.abstract, strict=True)]
    expected = softmax(clf.logits(texts), 2.0)
    probs = out[[f"prob_{lab}" for lab in clf.labels]].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert list(out["label"]) == [clf.labels[i] for i in expected.argmax(1)]


def test_a_language_model_logged_with_the_old_pyfunc_loads_and_generates(
    store: dict[str, Any], tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from paperops.inference.decoding import SamplingParams, TorchDecoder, generate
    from paperops.models.lm import load_lm, make_tiny_lm

    torch.set_num_threads(1)
    docs = [f"What should I take for fever after {i % 5 + 1} days?" for i in range(60)]
    bundle = make_tiny_lm(tmp_path / "lm", docs, train_steps=5)
    assert "from paperops.generation import" in (LEGACY / "mlflow_pyfunc_lm.py").read_text()

    params = {"max_new_tokens": 8, "temperature": 0.8, "top_p": 0.95, "top_k": 0, "seed": 3}
    defaults = {**params, "max_new_tokens": 32, "seed": 0}  # the old file's PARAMS
    uri = log_legacy(
        store, LEGACY / "mlflow_pyfunc_lm.py", bundle, {"prompt": ["What"]}, params=defaults
    )
    out = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"prompt": ["What should"]}), params)

    lm = load_lm(bundle)
    sp = SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.95, top_k=0, seed=3)
    ids = list(generate(TorchDecoder(lm), lm.prompt_ids("What should"), sp))
    assert out["text"].tolist() == [lm.decode(ids)]
    assert out["generated_tokens"].tolist() == [len(ids)]
