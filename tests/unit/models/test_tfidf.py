"""The TF-IDF family: trains, predicts, saves with skops and refuses unsafe or mismatched files."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paperops.data.text import model_text
from paperops.models.base import ModelLoadError
from paperops.models.tfidf import MODEL_FILE, TfidfClassifier, TfidfConfig


def _split(prepared_dir: Path, name: str) -> tuple[list[str], list[str]]:
    df = pd.read_parquet(prepared_dir / f"{name}.parquet")
    return [model_text(t, a) for t, a in zip(df.title, df.abstract, strict=True)], list(df.label)


@pytest.fixture
def trained(prepared_dir: Path) -> tuple[TfidfClassifier, Path]:
    texts, y = _split(prepared_dir, "train")
    labels = sorted(set(y))
    model = TfidfClassifier(labels, TfidfConfig(min_df=1)).fit(texts, y)
    return model, prepared_dir


@pytest.mark.parametrize("classifier", ["linear_svc", "logreg"])
def test_learns_separable_classes(prepared_dir: Path, classifier: str) -> None:
    texts, y = _split(prepared_dir, "train")
    labels = sorted(set(y))
    model = TfidfClassifier(labels, TfidfConfig(min_df=1, classifier=classifier)).fit(texts, y)
    test_texts, test_y = _split(prepared_dir, "test")
    pred = [labels[i] for i in model.logits(test_texts).argmax(1)]
    assert np.mean(np.array(pred) == np.array(test_y)) == 1.0
    assert model.logits(test_texts).shape == (len(test_texts), len(labels))


def test_save_load_round_trip_is_exact(trained, tmp_path: Path) -> None:
    model, prepared_dir = trained
    texts, _ = _split(prepared_dir, "val")
    model.save(tmp_path / "m")
    loaded = TfidfClassifier.load(tmp_path / "m", expected_labels=model.labels)
    np.testing.assert_array_equal(loaded.logits(texts), model.logits(texts))
    assert loaded.config == model.config
    assert not list((tmp_path / "m").glob(".*tmp"))


def test_label_map_mismatch_is_refused(trained, tmp_path: Path) -> None:
    model, _ = trained
    model.save(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="label map does not match"):
        TfidfClassifier.load(tmp_path / "m", expected_labels=[*model.labels, "extra"])


def test_missing_and_corrupt_files_name_the_file(trained, tmp_path: Path) -> None:
    model, _ = trained
    with pytest.raises(ModelLoadError, match="not found"):
        TfidfClassifier.load(tmp_path / "nothing")
    model.save(tmp_path / "m")
    (tmp_path / "m" / MODEL_FILE).write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="corrupt"):
        TfidfClassifier.load(tmp_path / "m")


def test_a_file_naming_an_untrusted_type_is_refused(trained, tmp_path: Path) -> None:
    """A tampered model file that would construct an arbitrary object (here os.system) is refused
    before anything is built: skops checks every type against its trusted list."""
    model, _ = trained
    model.save(tmp_path / "m")
    path = tmp_path / "m" / MODEL_FILE
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(members["schema.json"])
    schema["__class__"], schema["__module__"] = "system", "os"
    members["schema.json"] = json.dumps(schema).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError, match=r"does not trust.*os\.system"):
        TfidfClassifier.load(tmp_path / "m")


def test_bad_config_and_untrained_use(prepared_dir: Path) -> None:
    with pytest.raises(ValueError, match="classifier"):
        TfidfConfig(classifier="xgboost")
    with pytest.raises(RuntimeError, match="not trained"):
        TfidfClassifier(["a", "b"]).logits(["x"])
    with pytest.raises(ValueError, match="not in the label map"):
        TfidfClassifier(["a", "b"]).fit(["x", "y"], ["a", "c"])


def test_vocabulary_file_is_checked_against_the_model(trained, tmp_path: Path) -> None:
    """The vocabulary lives in a compact JSON list next to model.skops; a missing or mismatched
    one is refused with the file named."""
    from paperops.models.tfidf import VOCAB_FILE

    model, _ = trained
    model.save(tmp_path / "m")
    vocab = tmp_path / "m" / VOCAB_FILE
    terms = json.loads(vocab.read_text())
    assert len(terms) == len(model.pipeline.named_steps["tfidf"].vocabulary_)
    vocab.write_text(json.dumps(terms[:-1]))
    with pytest.raises(ModelLoadError, match="does not match"):
        TfidfClassifier.load(tmp_path / "m")
    vocab.unlink()
    with pytest.raises(ModelLoadError, match=r"vocabulary\.json not found"):
        TfidfClassifier.load(tmp_path / "m")
