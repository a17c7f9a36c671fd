"""Finetune family: end-to-end fine-tuning of the tiny encoder, LoRA, LR groups, freezing."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import CONFIG_DIR, small_trainer_cfg

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from paperops.data.datamodule import load_splits_for_model  # noqa: E402
from paperops.models.base import META_FILE, ModelLoadError, load_classifier  # noqa: E402
from paperops.models.encoder import embed  # noqa: E402
from paperops.models.finetune import (  # noqa: E402
    ENCODER_DIR,
    HEAD_FILE,
    FinetuneClassifier,
    FinetuneConfig,
    layerwise_param_groups,
)


def trainer_cfg(**overrides: Any) -> dict[str, Any]:
    return small_trainer_cfg(**{"max_epochs": 10, "patience": 3, **overrides})


def model_cfg(encoder: Path, **overrides: Any) -> dict[str, Any]:
    """configs/model/finetune.yaml with the tiny encoder and a fast, reliable schedule."""
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "finetune.yaml").read_text())
    cfg.update(
        encoder=str(encoder),
        max_seq_length=64,
        batch_size=8,
        lr=1e-3,
        head_lr=1e-2,
        dropout=0.0,
    )
    cfg.update(overrides)
    return cfg


LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits(_prepared_once: Path):
    return load_splits_for_model(_prepared_once)


@pytest.fixture(scope="module")
def trained(splits, tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    data, labels = splits
    work = tmp_path_factory.mktemp("finetune_fit")
    logger = CSVLogger(work / "logs", name="finetune")
    clf = FinetuneClassifier(labels, model_cfg(tiny_encoder_dir))
    clf.fit(
        data["train"],
        data["val"],
        trainer_cfg=trainer_cfg(),
        loggers=[logger],
        work_dir=work,
        seed=0,
    )
    return clf, logger


@pytest.fixture
def bundle(trained, tmp_path: Path) -> Path:
    return trained[0].save(tmp_path / "bundle")


def _held_out_accuracy(clf, data) -> float:
    held_out = ("calibration", "test")
    correct = sum(int((clf.logits(data[s].texts).argmax(1) == data[s].y).sum()) for s in held_out)
    return correct / sum(len(data[s]) for s in held_out)


def test_config_keys_are_the_yaml_contract(tiny_encoder_dir: Path):
    cfg = FinetuneConfig.from_dict(model_cfg(tiny_encoder_dir, lora=LORA))
    assert cfg.lora.enabled and cfg.lora.target_modules == ["query", "value"]
    with pytest.raises(ValueError, match="unknown finetune config keys"):
        FinetuneConfig.from_dict({"encoder": "default", "lr_decay": 0.9})
    with pytest.raises(ValueError, match="schedule"):
        FinetuneConfig(schedule="step")


def test_fit_predicts_and_logs(trained, splits):
    clf, logger = trained
    data, labels = splits
    logits = clf.logits(data["test"].texts)
    assert logits.shape == (len(data["test"]), len(labels)) and logits.dtype == np.float32
    assert _held_out_accuracy(clf, data) >= 0.8
    s = clf.fit_summary
    assert {"best_epoch", "best_score", "epochs_run", "train_seconds", "embed_seconds"} <= set(s)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val_macro_f1")]
    assert val_epochs == list(range(s["epochs_run"]))
    assert all(r["val_acc"] and r["val_loss"] for r in rows if r.get("val_macro_f1"))


def test_save_load_identical_logits_and_plain_bundle(trained, splits, bundle: Path):
    clf, _ = trained
    data, labels = splits
    names = sorted(p.name for p in bundle.iterdir())
    assert names == [ENCODER_DIR, HEAD_FILE, META_FILE]
    loaded = load_classifier(bundle, expected_labels=labels)
    assert isinstance(loaded, FinetuneClassifier)
    texts = data["test"].texts + data["val"].texts
    np.testing.assert_array_equal(loaded.logits(texts), clf.logits(texts))
    # the encoder/ dir is a sentence-transformers model in its own right
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(bundle / ENCODER_DIR), device="cpu").encode(texts)
    np.testing.assert_allclose(
        embed(loaded.module.encoder, texts, 4, progress=False), ref, atol=1e-5
    )


def test_load_errors(bundle: Path, splits):
    _, labels = splits
    with pytest.raises(ModelLoadError, match="label map does not match"):
        FinetuneClassifier.load(bundle, expected_labels=list(reversed(labels)))
    (bundle / HEAD_FILE).write_bytes(b"\x00" * 20)
    with pytest.raises(ModelLoadError, match=r"head\.safetensors is corrupt"):
        FinetuneClassifier.load(bundle)
    (bundle / HEAD_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"head\.safetensors not found: retrain or restore"):
        FinetuneClassifier.load(bundle)


def test_load_missing_or_changed_encoder(trained, tmp_path: Path):
    clf, _ = trained
    bundle = clf.save(tmp_path / "b1")
    weights = bundle / ENCODER_DIR / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x01\x02\x03\x04"  # a flipped weight: loads, but is not the saved encoder
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="not the encoder this bundle was saved with"):
        FinetuneClassifier.load(bundle)
    weights.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load the encoder"):
        FinetuneClassifier.load(bundle)
    (bundle / ENCODER_DIR / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"encoder/config\.json not found"):
        FinetuneClassifier.load(bundle)


def test_head_shape_must_match_labels(bundle: Path, splits):
    _, labels = splits
    meta = json.loads((bundle / META_FILE).read_text())
    meta["labels"] = labels[:3]
    (bundle / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"head shape \(4, 32\) does not match 3 labels"):
        FinetuneClassifier.load(bundle)


def test_lora_trains_and_saves_a_plain_model(splits, tiny_encoder_dir, tmp_path: Path):
    data, labels = splits
    clf = FinetuneClassifier(labels, model_cfg(tiny_encoder_dir, lr=5e-3, lora=LORA))
    module = clf.build_module()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    clf.fit(
        data["train"], data["val"], trainer_cfg=trainer_cfg(), loggers=[], work_dir=tmp_path, seed=0
    )
    assert clf.fit_summary["trainable_params"] == sum(
        p.numel() for n, p in module.named_parameters() if n in trainable
    )
    # 4 classes (chance 0.25) and 11 held-out papers: one paper is 0.09, and the thread count of
    # the process (other tests set it) moves one or two of them; LoRA learned if well over chance
    assert _held_out_accuracy(clf, data) >= 0.7
    bundle = clf.save(tmp_path / "bundle")
    from safetensors import safe_open

    with safe_open(str(bundle / ENCODER_DIR / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k or "base_model" in k for k in keys)
    loaded = FinetuneClassifier.load(bundle)
    assert not any(type(m).__module__.startswith("peft") for m in loaded.module.modules())
    np.testing.assert_allclose(
        loaded.logits(data["test"].texts), clf.logits(data["test"].texts), atol=1e-5
    )


def test_layerwise_lr_groups(splits, tiny_encoder_dir):
    _, labels = splits
    cfg = model_cfg(tiny_encoder_dir, lr=1e-3, head_lr=1e-2, layerwise_lr_decay=0.5)
    module = FinetuneClassifier(labels, cfg).build_module()
    groups = layerwise_param_groups(
        module, num_layers=2, lr=1e-3, head_lr=1e-2, decay=0.5, weight_decay=0.01
    )
    lrs = {g["name"].removesuffix("_no_decay"): g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {"layer_1": 1e-3, "layer_0": 5e-4, "embeddings": 2.5e-4, "head": 1e-2}
    )
    for g in groups:
        assert g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else 0.01)
    n_trainable = sum(1 for p in module.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable

    # the optimizer Lightning gets: those groups, warmup from 0 then linear decay, per step
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    initial = {g["name"]: g["initial_lr"] for g in opt.param_groups}
    assert initial["layer_1"] == pytest.approx(1e-3) and initial["head"] == pytest.approx(1e-2)
    assert all(g["lr"] == 0.0 for g in opt.param_groups)  # warmup_ratio 0.1 of 10 steps
    opt.step()
    sched.step()
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(initial)


def test_freeze_layers(splits, tiny_encoder_dir):
    _, labels = splits

    def trainable(freeze: int) -> set[str]:
        module = FinetuneClassifier(
            labels, model_cfg(tiny_encoder_dir, freeze_layers=freeze)
        ).build_module()
        return {n for n, p in module.named_parameters() if p.requires_grad}

    everything = trainable(0)
    assert any(".embeddings." in n for n in everything)
    assert not any(".pooler." in n for n in everything)  # never used by sentence pooling
    one = trainable(1)
    assert not any(".embeddings." in n or ".layer.0." in n for n in one)
    assert any(".layer.1." in n for n in one) and {"head.weight", "head.bias"} <= one
    assert trainable(2) == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="freeze_layers=3 but the encoder has 2"):
        trainable(3)
