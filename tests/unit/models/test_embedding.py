"""Embedding family: trains a head on the tiny encoder, logs metrics, round-trips its bundle."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import CONFIG_DIR, small_trainer_cfg

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from paperops.data.datamodule import load_splits_for_model  # noqa: E402
from paperops.models.base import META_FILE, ModelLoadError, load_classifier  # noqa: E402
from paperops.models.embedding import (  # noqa: E402
    HEAD_FILE,
    EmbeddingClassifier,
    EmbeddingConfig,
)
from paperops.models.embedding_cache import EmbeddingCache, text_key  # noqa: E402
from paperops.models.lightning import (  # noqa: E402
    balanced_class_weights,
    build_trainer,
    configure_threads,
)


def trainer_cfg(**overrides: Any) -> dict[str, Any]:
    return small_trainer_cfg(**{"max_epochs": 25, "patience": 8, **overrides})


def model_cfg(encoder: Path, **overrides: Any) -> dict[str, Any]:
    """configs/model/embedding.yaml with the tiny encoder and fast hyperparameters."""
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "embedding.yaml").read_text())
    cfg.update(
        encoder=str(encoder), cache_dir=None, hidden_dim=64, dropout=0.0, lr=0.02, batch_size=16
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits(_prepared_once: Path):
    return load_splits_for_model(_prepared_once)


@pytest.fixture(scope="module")
def trained(splits, tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One MLP head trained with a CSV logger (shared by the read-only tests)."""
    data, labels = splits
    work = tmp_path_factory.mktemp("embedding_fit")
    logger = CSVLogger(work / "logs", name="embedding")
    clf = EmbeddingClassifier(labels, model_cfg(tiny_encoder_dir))
    clf.fit(
        data["train"],
        data["val"],
        trainer_cfg=trainer_cfg(),
        loggers=[logger],
        work_dir=work,
        seed=0,
    )
    return clf, logger, work


def _accuracy(clf, split) -> float:
    return float((clf.logits(split.texts).argmax(1) == split.y).mean())


def test_config_keys_are_the_yaml_contract(tiny_encoder_dir: Path):
    cfg = EmbeddingConfig.from_dict(model_cfg(tiny_encoder_dir))  # `family` is accepted
    assert cfg.head == "mlp"
    with pytest.raises(ValueError, match="unknown embedding config keys"):
        EmbeddingConfig.from_dict({"encoder": "default", "hiden_dim": 3})
    with pytest.raises(ValueError, match="head must be one of"):
        EmbeddingConfig(head="transformer")


def test_fit_predicts_the_separable_classes(trained, splits):
    clf, _, _ = trained
    data, labels = splits
    held_out = ("calibration", "test")
    logits = clf.logits(data["test"].texts)
    assert logits.shape == (len(data["test"]), len(labels)) and logits.dtype == np.float32
    correct = sum(int((clf.logits(data[s].texts).argmax(1) == data[s].y).sum()) for s in held_out)
    assert correct / sum(len(data[s]) for s in held_out) >= 0.8  # chance is ~0.25-0.4
    assert _accuracy(clf, data["train"]) >= 0.9
    s = clf.fit_summary
    assert {"best_epoch", "best_score", "epochs_run", "train_seconds", "embed_seconds"} <= set(s)
    assert 0 <= s["best_epoch"] < s["epochs_run"] and s["ranks"] == [0]


def test_metrics_reach_the_logger_every_epoch(trained):
    clf, logger, _ = trained
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val_macro_f1")]
    train_epochs = [int(r["epoch"]) for r in rows if r.get("train_loss")]
    n = clf.fit_summary["epochs_run"]
    assert val_epochs == list(range(n)) and train_epochs == list(range(n))
    for key in ("val_loss", "val_acc"):
        assert all(r[key] for r in rows if r.get("val_macro_f1"))
    best = max(float(r["val_macro_f1"]) for r in rows if r.get("val_macro_f1"))
    assert clf.fit_summary["best_score"] == pytest.approx(best)


def test_embeddings_are_cached_for_the_next_run(trained, splits, tiny_encoder_dir, monkeypatch):
    clf, _, work = trained
    data, labels = splits
    cache = EmbeddingCache(work / "embedding_cache")
    from safetensors import safe_open

    keys = set()
    for shard in cache.shards(clf.encoder):
        with safe_open(str(shard), "np") as f:
            keys |= {k.tobytes() for k in f.get_tensor("keys")}
    for split in ("train", "val"):
        assert {text_key(t) for t in data[split].texts} <= keys
    cache_files = cache.shards(clf.encoder)
    import paperops.models.encoder as encoder_module

    def no_embedding(*args, **kwargs):
        raise AssertionError("the encoder ran although the embeddings are cached")

    monkeypatch.setattr(encoder_module, "embed", no_embedding)
    again = EmbeddingClassifier(labels, model_cfg(tiny_encoder_dir, head="linear", lr=0.05))
    again.fit(
        data["train"],
        data["val"],
        trainer_cfg=trainer_cfg(max_epochs=3),
        loggers=[],
        work_dir=work,
        seed=1,
    )
    assert cache.shards(clf.encoder) == cache_files  # all hits
    assert again.fit_summary["epochs_run"] == 3
    assert again.logits(data["val"].texts).shape == (len(data["val"]), len(labels))


def test_save_load_gives_identical_logits(trained, splits, tmp_path: Path):
    clf, _, _ = trained
    data, labels = splits
    out = clf.save(tmp_path / "bundle")
    assert sorted(p.name for p in out.iterdir()) == [HEAD_FILE, META_FILE]
    meta = json.loads((out / META_FILE).read_text())
    assert meta["family"] == "embedding" and meta["labels"] == labels
    assert meta["encoder"]["fingerprint"] == clf.encoder.fingerprint()
    assert meta["encoder"]["dim"] == 32
    loaded = load_classifier(out, expected_labels=labels)
    assert isinstance(loaded, EmbeddingClassifier) and loaded.cache_dir is None
    texts = data["test"].texts + data["val"].texts
    np.testing.assert_array_equal(loaded.logits(texts), clf.logits(texts))


@pytest.fixture
def bundle(trained, tmp_path: Path) -> Path:
    return trained[0].save(tmp_path / "bundle")


def _edit_meta(bundle: Path, **changes: Any) -> None:
    meta = json.loads((bundle / META_FILE).read_text())
    for key, value in changes.items():
        if key.startswith("encoder_"):
            meta["encoder"][key.removeprefix("encoder_")] = value
        else:
            meta[key] = value
    (bundle / META_FILE).write_text(json.dumps(meta))


def test_load_missing_files(bundle: Path):
    (bundle / HEAD_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"head\.safetensors not found: retrain or restore it"):
        EmbeddingClassifier.load(bundle)
    (bundle / META_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"model\.json not found"):
        EmbeddingClassifier.load(bundle)


def test_load_corrupt_head(bundle: Path):
    (bundle / HEAD_FILE).write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelLoadError, match=r"head.safetensors is corrupt .*retrain or restore"):
        EmbeddingClassifier.load(bundle)


def test_load_corrupt_meta(bundle: Path):
    (bundle / META_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt"):
        EmbeddingClassifier.load(bundle)


def test_load_label_mismatch(bundle: Path, splits):
    _, labels = splits
    with pytest.raises(ModelLoadError, match="label map does not match"):
        EmbeddingClassifier.load(bundle, expected_labels=[*labels, "q-bio"])


def test_load_head_not_matching_the_label_count(bundle: Path, splits):
    _, labels = splits
    _edit_meta(bundle, labels=[*labels, "q-bio"])
    with pytest.raises(ModelLoadError, match="head has 4 outputs but the label map has 5"):
        EmbeddingClassifier.load(bundle)


def test_load_with_a_missing_encoder(bundle: Path, tmp_path: Path):
    gone = tmp_path / "moved" / "encoder"
    _edit_meta(bundle, encoder_spec=str(gone), encoder_resolved=str(gone))
    with pytest.raises(ModelLoadError, match="not available here") as err:
        EmbeddingClassifier.load(bundle)
    assert str(gone) in str(err.value)


def test_load_with_a_different_encoder(bundle: Path, tiny_encoder_dir: Path, tmp_path: Path):
    other = Path(shutil.copytree(tiny_encoder_dir, tmp_path / "other_encoder"))
    from transformers import BertModel

    model = BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(0.01)
    model.save_pretrained(other)
    _edit_meta(bundle, encoder_spec=str(other))
    with pytest.raises(ModelLoadError, match="encoder mismatch") as err:
        EmbeddingClassifier.load(bundle)
    msg = str(err.value)
    assert str(other) in msg and str(tiny_encoder_dir) in msg


def test_linear_head_and_unweighted_loss(splits, tiny_encoder_dir, tmp_path: Path):
    data, labels = splits
    clf = EmbeddingClassifier(
        labels, model_cfg(tiny_encoder_dir, head="linear", lr=0.05, class_weight=None)
    )
    clf.fit(
        data["train"],
        data["val"],
        trainer_cfg=trainer_cfg(),
        loggers=[],
        work_dir=tmp_path,
        seed=0,
    )
    assert [type(m).__name__ for m in clf.head] == ["Linear"]
    assert _accuracy(clf, data["train"]) >= 0.9
    loaded = EmbeddingClassifier.load(clf.save(tmp_path / "b"), cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(loaded.logits(data["val"].texts), clf.logits(data["val"].texts))
    assert not (tmp_path / "c").exists()  # small batches are not worth a cache file
    loaded.cache_min_texts = 1
    np.testing.assert_array_equal(loaded.logits(data["val"].texts), clf.logits(data["val"].texts))
    assert len(list((tmp_path / "c").glob("*/shard-*.safetensors"))) == 1


def test_balanced_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    ref = compute_class_weight("balanced", classes=np.arange(4), y=y)
    np.testing.assert_allclose(balanced_class_weights(y, 4), ref)
    # a class absent from training gets weight 1 instead of a division by zero
    assert balanced_class_weights(np.array([0, 0, 1]), 3)[2] == 1.0


def test_build_trainer_from_config(tmp_path: Path):
    trainer = build_trainer(
        trainer_cfg(enable_progress_bar=True),
        loggers=[],
        ckpt_dir=tmp_path / "ckpt",
        monitor="val_macro_f1",
        mode="max",
    )
    kinds = {type(c) for c in trainer.callbacks}
    assert {ModelCheckpoint, EarlyStopping, TQDMProgressBar} <= kinds
    ckpt = trainer.checkpoint_callback
    assert (ckpt.monitor, ckpt.mode, ckpt.save_last) == ("val_macro_f1", "max", True)
    assert Path(ckpt.dirpath) == tmp_path / "ckpt"
    stop = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
    assert stop.patience == 8
    assert trainer.max_epochs == 25 and trainer.gradient_clip_val == 1.0
    with pytest.raises(ValueError, match="unknown trainer config keys"):
        build_trainer(
            trainer_cfg(max_epoch=3), loggers=[], ckpt_dir=tmp_path, monitor="x", mode="max"
        )


def test_threads_split_between_cpu_processes(monkeypatch):
    import paperops.models.lightning as pl_helpers

    monkeypatch.setattr(pl_helpers, "_cpu_count", lambda: 8)
    before = torch.get_num_threads()
    try:
        cfg = {"num_threads": None, "devices": 2, "accelerator": "cpu"}
        assert configure_threads(cfg) == 4
        assert configure_threads({"num_threads": 3, "devices": 1}) == 3
    finally:
        torch.set_num_threads(before)
