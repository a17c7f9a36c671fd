"""The hybrid family: TF-IDF + int8 ONNX encoder in one LinearSVC, trained by `paperops train`,
saved self-contained (the graph travels in the bundle), served and exported without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paperops.data.text import model_text
from paperops.export.common import ExportError
from paperops.models.base import ModelLoadError, load_classifier
from paperops.models.embedding_cache import EmbeddingCache
from paperops.models.hybrid import HybridClassifier
from paperops.models.onnx_text import ENCODER_DIR, ENCODER_META, OnnxEncoder


def _split(prepared: Path, name: str) -> tuple[list[str], list[str]]:
    df = pd.read_parquet(prepared / f"{name}.parquet")
    return [model_text(t, a) for t, a in zip(df.title, df.abstract, strict=True)], list(df.label)


def test_trained_bundle_is_self_contained_and_accurate(
    hybrid_bundle: Path, _prepared_once: Path
) -> None:
    meta = json.loads((hybrid_bundle / "model.json").read_text())
    assert meta["family"] == "hybrid"
    assert (hybrid_bundle / ENCODER_DIR / ENCODER_META).is_file()
    model = load_classifier(hybrid_bundle)
    assert isinstance(model, HybridClassifier)
    texts, y = _split(_prepared_once, "test")
    logits = model.logits(texts)
    assert logits.shape == (len(texts), len(model.labels))
    pred = [model.labels[i] for i in logits.argmax(1)]
    assert np.mean(np.array(pred) == np.array(y)) >= 0.9
    # the embedding block is in the features: dropping it changes the scores
    words = model.vectorizer.transform(texts)
    n_words = words.shape[1]
    assert model.clf.coef_.shape[1] == n_words + model.encoder.dim
    assert np.abs(model.clf.coef_[:, n_words:]).sum() > 0


def test_serving_a_hybrid_bundle_never_loads_the_torch_encoder(hybrid_bundle: Path) -> None:
    # (skops imports torch when it is installed, so `torch in sys.modules` says nothing here;
    # the serving image has no torch, and the PyTorch encoder needs transformers)
    code = (
        "import sys; from paperops.inference.predictor import load_predictor\n"
        f"p = load_predictor({str(hybrid_bundle)!r})\n"
        "out = p.predict_texts(['a paper about graphs and groups'])\n"
        "assert p.info.runtime == 'sklearn', p.info.runtime\n"
        "bad = {'transformers', 'paperops.models.encoder'} & set(sys.modules)\n"
        "print(out[0].label, sorted(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_tampered_encoder_graph_is_refused(hybrid_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(hybrid_bundle, tmp_path / "b"))
    graph = (
        copy / ENCODER_DIR / json.loads((copy / ENCODER_DIR / ENCODER_META).read_text())["graph"]
    )
    graph.write_bytes(graph.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        load_classifier(copy)
    shutil.rmtree(copy / ENCODER_DIR)
    with pytest.raises(ModelLoadError, match=r"encoder\.json not found"):
        load_classifier(copy)


def test_export_copies_the_bundle_and_passes_parity(hybrid_bundle: Path, tmp_path: Path) -> None:
    from paperops.export.classifier import export_bundle
    from paperops.inference.predictor import load_predictor

    result = export_bundle(hybrid_bundle, tmp_path / "export", texts=["graphs", "groups", "stars"])
    assert result.runtime == "sklearn"
    assert result.parity["sklearn"]["passed"]
    assert (tmp_path / "export" / ENCODER_DIR / ENCODER_META).is_file()
    pred = load_predictor(tmp_path / "export").predict_texts(["galaxies and stars"])
    ref = load_predictor(hybrid_bundle).predict_texts(["galaxies and stars"])
    assert pred[0].label == ref[0].label
    assert pred[0].confidence == pytest.approx(ref[0].confidence)


def test_encoder_graph_is_built_once_and_checked(
    tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paperops.export import encoder as export_encoder

    texts = [f"paper {i} on graphs, groups and stars" for i in range(20)]
    first = export_encoder.ensure_encoder_graph(str(tiny_encoder_dir), 64, tmp_path, texts)
    meta = json.loads((first / ENCODER_META).read_text())
    assert meta["agreement"]["mean_cosine"] >= export_encoder.MIN_MEAN_COSINE
    stamp = (first / ENCODER_META).stat().st_mtime_ns
    again = export_encoder.ensure_encoder_graph(str(tiny_encoder_dir), 64, tmp_path, texts[:8])
    assert again == first and (first / ENCODER_META).stat().st_mtime_ns == stamp
    # another max_seq_length is another graph; a disagreeing graph is never kept
    monkeypatch.setattr(export_encoder, "MIN_MEAN_COSINE", 1.01)
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_encoder.ensure_encoder_graph(str(tiny_encoder_dir), 32, tmp_path, texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    with pytest.raises(ExportError, match="at least 8 calibration texts"):
        export_encoder.ensure_encoder_graph(str(tiny_encoder_dir), 32, tmp_path, texts[:3])


def test_the_int8_encoder_goes_through_the_per_text_cache(
    hybrid_bundle: Path, tmp_path: Path
) -> None:
    enc = OnnxEncoder(hybrid_bundle / ENCODER_DIR)
    cache = EmbeddingCache(tmp_path)
    many = [f"paper number {i}" for i in range(300)]
    first = cache.get_or_compute(enc, many, progress=False)
    assert len(cache.shards(enc)) == 1 and cache.directory(enc).parent == tmp_path
    assert np.allclose(first[:5], enc.embed_texts(many[:5]), atol=1e-6)
    again = cache.get_or_compute(enc, [many[5], many[0]], progress=False)
    assert np.array_equal(again, first[[5, 0]]) and cache.hits == 1
    assert len(cache.shards(enc)) == 1


def test_embedding_head_on_the_int8_graph_exports_over_that_graph(
    _prepared_once: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    """embed_backend=onnx-int8: the head trains on the int8 graph's embeddings, the bundle
    keeps the graph, and the export is that graph + the head (parity exact, no re-quantizing)."""
    from paperops.export.classifier import export_bundle
    from paperops.inference.predictor import load_predictor
    from tests.conftest import TINY_HEAD, _train_bundle

    bundle = _train_bundle(
        tmp_path,
        _prepared_once,
        "embedding",
        f"model.encoder={tiny_encoder_dir}",
        "model.embed_backend=onnx-int8",
        f"model.graph_dir={tmp_path}/graphs",
        f"model.cache_dir={tmp_path}/cache",
        *TINY_HEAD,
    )
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["encoder"]["backend"] == "onnx-int8"
    assert (bundle / ENCODER_DIR / ENCODER_META).is_file()
    texts, y = _split(_prepared_once, "test")
    model = load_classifier(bundle)
    assert model.encoder is None and model.onnx_encoder is not None  # no torch encoder loaded
    pred = [model.labels[i] for i in model.logits(texts).argmax(1)]
    assert np.mean(np.array(pred) == np.array(y)) >= 0.8
    result = export_bundle(bundle, tmp_path / "export", texts=texts)
    assert result.runtime == "onnx" and result.meta["encoder_int8"]
    assert result.parity["fp32"]["max_abs_diff"] < 1e-4 and "int8" not in result.parity
    served = load_predictor(tmp_path / "export").predict_texts(texts[:5])
    direct = load_predictor(bundle).predict_texts(texts[:5])
    assert [p.label for p in served] == [p.label for p in direct]


def test_requests_skip_the_cache_batch_jobs_fill_it(hybrid_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(hybrid_bundle, tmp_path / "b"))
    meta = json.loads((copy / "model.json").read_text())
    meta["config"]["cache_dir"] = str(tmp_path / "cache")
    (copy / "model.json").write_text(json.dumps(meta))
    (tmp_path / "cache").mkdir()
    model = load_classifier(copy)
    model.logits(["a request about graphs", "and one about stars"])
    assert not list((tmp_path / "cache").rglob("shard-*"))  # a request: never written
    batch = [f"paper {i} on graphs and groups" for i in range(300)]
    first = model.logits(batch)
    assert len(list((tmp_path / "cache").rglob("shard-*"))) == 1
    np.testing.assert_allclose(model.logits(batch), first)  # read back: the same scores
