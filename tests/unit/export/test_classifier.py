"""`paperops export`: ONNX graphs of the tiny neural bundles checked against PyTorch, the int8
twin, tokenizer parity, serving through load_predictor, failures that leave nothing behind, the
tfidf export, ensure_export's reuse, and the CLI command."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import CONFIG_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from paperops.cli import app  # noqa: E402
from paperops.data.datamodule import load_splits_for_model  # noqa: E402
from paperops.export import classifier as export_mod  # noqa: E402
from paperops.export.cache import ensure_export  # noqa: E402
from paperops.export.classifier import export_bundle  # noqa: E402
from paperops.export.common import (  # noqa: E402
    FFN_OUTPUT,
    INT8_FILE,
    MODEL_FILE,
    ExportConfig,
    ExportError,
    bundle_fingerprint,
    probe_texts,
)
from paperops.inference.onnx_classifier import OnnxRuntime  # noqa: E402
from paperops.inference.predictor import load_predictor  # noqa: E402
from paperops.models.base import EXPORT_FILE, ModelLoadError, load_classifier  # noqa: E402

# Tiny models: every export here is loose on int8 (a 32-wide random BERT quantizes badly) and
# strict on fp32, which must match PyTorch to float precision whatever the model.
LOOSE_INT8 = {"int8_max_abs_diff": 1.0, "int8_min_agreement": 0.0, "int8_max_accuracy_drop": None}


def cfg(**parity: Any) -> ExportConfig:
    # The tiny encoder has only layers 0 and 1, which the default keeps in fp32: quantize (and
    # smooth) them here so the int8 path is exercised.
    quantize = {"calibration_rows": 32, "exclude": [FFN_OUTPUT]}
    return ExportConfig.from_mapping(
        {"parity": {"max_rows": None, **LOOSE_INT8, **parity}, "quantize": quantize}
    )


def texts_of_many_lengths() -> list[str]:
    """1 word to far beyond max_seq_length (truncation), mixed case and unicode."""
    words = ["Graph", "neural", "networks", "for", "galaxy", "Redshift", "surveys", "moduli"]
    out = ["Cohomology", "", "ÉTALE cohomology of Stacks — naïve résumé"]
    for n in (3, 9, 30, 80, 200, 400):
        out.append(" ".join(words[i % len(words)] for i in range(n)))
    return out


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def val_texts(_prepared_once: Path) -> list[str]:
    splits, _ = load_splits_for_model(_prepared_once, ("val", "test"))
    return splits["val"].texts + splits["test"].texts


@pytest.fixture(scope="module")
def exported(
    embedding_bundle: Path, _prepared_once: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("export") / "embedding_onnx"
    export_bundle(embedding_bundle, out, cfg_export=cfg(), processed_dir=_prepared_once, threads=1)
    return out


@pytest.fixture(scope="module")
def torch_model(embedding_bundle: Path) -> Any:
    return load_classifier(embedding_bundle)


# --- the export directory --------------------------------------------------------------------


def test_export_dir_is_self_contained(exported: Path, embedding_bundle: Path) -> None:
    meta = json.loads((exported / EXPORT_FILE).read_text())
    assert meta["runtime"] == "onnx" and meta["family"] == "embedding" and meta["int8"] is True
    assert meta["files"] == {
        "model": MODEL_FILE,
        "int8": INT8_FILE,
        "tokenizer": "tokenizer/tokenizer.json",
    }
    for name in ("model.json", "calibration.json", "training.json", MODEL_FILE, INT8_FILE):
        assert (exported / name).is_file(), name
    assert (exported / "tokenizer" / "tokenizer.json").is_file()
    assert not (exported / "head.safetensors").exists()  # the graph holds the head
    assert not (exported / ".work").exists()
    assert meta["source"]["fingerprint"] == bundle_fingerprint(embedding_bundle)
    assert meta["source"]["bundle"] == str(embedding_bundle.resolve())
    assert meta["max_seq_length"] == 128 and meta["opset"] == 18
    assert {"torch", "onnxruntime", "onnx", "tokenizers"} <= set(meta["versions"])
    assert meta["created_at"]
    p = meta["parity"]
    assert p["fp32"]["passed"] and p["fp32"]["max_abs_diff"] < 1e-4
    assert p["fp32"]["agreement"] == 1.0 and p["fp32"]["n"] > 0
    assert p["int8"]["n"] == p["fp32"]["n"]
    assert "val split" in p["texts"]
    assert p["fp32"]["accuracy"] == p["fp32"]["torch_accuracy"]  # labelled sample: accuracy too
    assert 0.0 <= p["int8"]["agreement_confident"] <= 1.0
    assert meta["quantization"]["smoothing"]["groups"] > 0
    # the graph: dynamic batch and sequence axes, output named logits
    import onnx

    graph = onnx.load(str(exported / MODEL_FILE), load_external_data=False).graph
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert set(dims) == {"input_ids", "attention_mask"}
    assert all(d[0] and d[1] for d in dims.values())
    assert [o.name for o in graph.output] == ["logits"]


def test_tokenization_matches_the_encoder(exported: Path, torch_model: Any) -> None:
    rt = OnnxRuntime.load(exported, threads=1)
    texts = texts_of_many_lengths()
    want = torch_model.encoder.tokenize(texts)
    got = rt.pad(rt.encode(texts))
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"].numpy())
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"].numpy())
    assert got["input_ids"].shape[1] == 128  # the 400-word text is truncated


def test_lowercasing_is_applied_when_the_encoder_does_it(exported: Path) -> None:
    rt = OnnxRuntime.load(exported, threads=1)
    rt.do_lower_case = True
    assert rt.encode(["GRAPH Networks"]) == rt.encode(["graph networks"])


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_fp32_matches_torch_for_any_batch_and_length(
    exported: Path, torch_model: Any, val_texts: list[str], n: int
) -> None:
    texts = (texts_of_many_lengths() + val_texts)[:n] if n < 17 else texts_of_many_lengths() * 2
    want = torch_model.logits(texts)
    for sub_batch in (1, 4, 64):
        rt = OnnxRuntime.load(exported, threads=1, sub_batch=sub_batch)
        got = rt.logits(texts)
        assert got.dtype == np.float64 and got.shape == (len(texts), 4)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_empty_input_gives_no_rows(exported: Path) -> None:
    assert OnnxRuntime.load(exported, threads=1).logits([]).shape == (0, 4)


def test_int8_loads_and_agrees_reasonably(
    exported: Path, torch_model: Any, val_texts: list[str]
) -> None:
    rt = OnnxRuntime.load(exported, int8=True, threads=1)
    assert rt.kind == "onnx-int8" and rt.labels == torch_model.labels
    got, want = rt.logits(val_texts), torch_model.logits(val_texts)
    assert np.isfinite(got).all()
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.75
    import onnx

    ops = {n.op_type for n in onnx.load(str(exported / INT8_FILE)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


def test_load_predictor_auto_serves_int8_with_export_info(
    exported: Path, embedding_bundle: Path, val_texts: list[str]
) -> None:
    pred = load_predictor(exported, threads=1)
    assert pred.info.runtime == "onnx-int8" and pred.info.family == "embedding"
    assert pred.info.export is not None and pred.info.export["runtime"] == "onnx"
    assert pred.info.temperature is not None  # calibration.json was copied
    fp32 = load_predictor(exported, runtime="onnx", threads=1)
    torch_pred = load_predictor(embedding_bundle, runtime="torch", threads=1)
    assert fp32.info.runtime == "onnx" and torch_pred.info.runtime == "torch"
    papers = [(t.split("\n")[0], t.split("\n", 1)[-1]) for t in val_texts[:6]]
    for a, b in zip(
        fp32.predict_papers(papers, top_k=4),
        torch_pred.predict_papers(papers, top_k=4),
        strict=True,
    ):
        assert a.label == b.label
        assert [s.label for s in a.prediction_set] == [s.label for s in b.prediction_set]
        np.testing.assert_allclose(
            [s.probability for s in a.top], [s.probability for s in b.top], atol=1e-4
        )


def test_torch_runtime_on_an_export_names_the_bundle(exported: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"ONNX export.*needs the bundle"):
        load_predictor(exported, runtime="torch")


def test_onnx_runtime_on_a_plain_bundle_says_export_it(embedding_bundle: Path) -> None:
    with pytest.raises(ModelLoadError, match="paperops export --model"):
        load_predictor(embedding_bundle, runtime="onnx")


# --- broken export directories ---------------------------------------------------------------


@pytest.fixture
def broken(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "copy"))


def test_corrupt_model_onnx(broken: Path) -> None:
    (broken / MODEL_FILE).write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match=r"model\.onnx cannot be loaded.*re-export"):
        load_predictor(broken, runtime="onnx")


def test_missing_int8_model(broken: Path) -> None:
    (broken / INT8_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"model\.int8\.onnx not found"):
        load_predictor(broken)  # auto trusts export.json: int8 listed -> clear error


def test_missing_or_corrupt_tokenizer(broken: Path) -> None:
    (broken / "tokenizer" / "tokenizer.json").write_text("{oops")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is corrupt"):
        OnnxRuntime.load(broken)
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json not found"):
        OnnxRuntime.load(broken)


def test_corrupt_export_json(broken: Path) -> None:
    (broken / EXPORT_FILE).write_text("{")
    with pytest.raises(ModelLoadError, match=r"export\.json is corrupt"):
        load_predictor(broken)


def test_model_with_the_wrong_number_of_labels(broken: Path) -> None:
    meta = json.loads((broken / "model.json").read_text())
    meta["labels"] = meta["labels"][:3]
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"gives 4 scores per text but model\.json has 3"):
        OnnxRuntime.load(broken)


# --- parity failures -------------------------------------------------------------------------


def test_tampered_graph_fails_fp32_parity_and_writes_nothing(
    embedding_bundle: Path, _prepared_once: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import numpy_helper

    real = export_mod._export_onnx

    def tampered(clf: Any, path: Path, opset: int, exporter: str) -> None:
        real(clf, path, opset, exporter)
        model = onnx.load(str(path))
        bias = next(  # the head's output bias: one value per label
            i for i in model.graph.initializer if i.name.endswith("bias") and list(i.dims) == [4]
        )
        arr = numpy_helper.to_array(bias).copy()
        arr[0] += 3.0  # the first label gets a large bonus
        bias.CopyFrom(numpy_helper.from_array(arr, bias.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export_mod, "_export_onnx", tampered)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="fp32 export does not match PyTorch") as e:
        export_bundle(
            embedding_bundle, out, cfg_export=cfg(), processed_dir=_prepared_once, threads=1
        )
    assert e.value.stage == "fp32" and not e.value.parity["fp32"]["passed"]
    assert "FAIL" in str(e.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp dirs left either


@pytest.mark.parametrize(
    "limits", [{"int8_max_abs_diff": 0.0}, {"int8_max_accuracy_drop": -1.0}], ids=["diff", "acc"]
)
def test_int8_parity_failure_raises_with_figures(
    embedding_bundle: Path, _prepared_once: Path, tmp_path: Path, limits: dict[str, float]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="int8 export does not match") as e:
        export_bundle(
            embedding_bundle,
            out,
            cfg_export=cfg(**limits),
            processed_dir=_prepared_once,
            threads=1,
        )
    assert e.value.stage == "int8"
    assert e.value.parity["fp32"]["passed"] and not e.value.parity["int8"]["passed"]
    assert "--no-int8" in str(e.value)
    assert not out.exists()


def test_failed_export_keeps_the_previous_one(
    exported: Path, embedding_bundle: Path, _prepared_once: Path, tmp_path: Path
) -> None:
    out = Path(shutil.copytree(exported, tmp_path / "out"))
    before = (out / EXPORT_FILE).read_text()
    with pytest.raises(ExportError):
        export_bundle(
            embedding_bundle,
            out,
            cfg_export=cfg(int8_max_abs_diff=0.0),
            processed_dir=_prepared_once,
            threads=1,
        )
    assert (out / EXPORT_FILE).read_text() == before


def test_missing_bundle_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.json not found"):
        export_bundle(tmp_path / "nope", tmp_path / "out", cfg_export=cfg())
    assert not (tmp_path / "out").exists()


# --- other families and exporters ------------------------------------------------------------


def test_tfidf_export_round_trip(tfidf_bundle: Path, _prepared_once: Path, tmp_path: Path) -> None:
    out = tmp_path / "tfidf_export"
    res = export_bundle(tfidf_bundle, out, cfg_export=cfg(), processed_dir=_prepared_once)
    assert res.runtime == "sklearn" and res.parity["sklearn"]["max_abs_diff"] == 0.0
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["runtime"] == "sklearn" and meta["int8"] is False
    assert {p.name for p in tfidf_bundle.iterdir()} <= {p.name for p in out.iterdir()}
    pred = load_predictor(out)
    assert pred.info.runtime == "sklearn" and pred.info.export["runtime"] == "sklearn"
    with pytest.raises(ModelLoadError, match="tfidf export"):
        load_predictor(out, runtime="onnx")
    papers = [("Cohomology of moduli stacks", "We prove that every smooth variety admits ...")]
    a = pred.predict_papers(papers)[0]
    b = load_predictor(tfidf_bundle).predict_papers(papers)[0]
    assert a == b


def test_finetune_bundle_exports_with_parity(
    tiny_encoder_dir: Path, tmp_path: Path, val_texts: list[str]
) -> None:
    """An untrained head on the tiny encoder: what matters is that the graph (encoder + its own
    weights + linear head) reproduces PyTorch."""
    from paperops.models.finetune import FinetuneClassifier

    model_cfg = yaml.safe_load((CONFIG_DIR / "model" / "finetune.yaml").read_text())
    model_cfg.update(encoder=str(tiny_encoder_dir), max_seq_length=64)
    torch.manual_seed(0)
    clf = FinetuneClassifier(["cs", "math", "hep-th"], model_cfg)
    clf.module = clf.build_module().eval()
    bundle = clf.save(tmp_path / "finetune")
    out = tmp_path / "finetune_onnx"
    res = export_bundle(bundle, out, cfg_export=cfg(), texts=val_texts, threads=1)
    assert res.family == "finetune" and res.parity["fp32"]["passed"]
    assert res.parity["texts"] == "texts"
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["max_seq_length"] == 64
    rt = OnnxRuntime.load(out, threads=1)
    texts = texts_of_many_lengths()
    np.testing.assert_allclose(rt.logits(texts), clf.logits(texts), atol=1e-4, rtol=0)
    assert rt.pad(rt.encode(texts))["input_ids"].shape[1] == 64


def test_dynamo_exporter_also_matches(
    embedding_bundle: Path, tmp_path: Path, val_texts: list[str], torch_model: Any
) -> None:
    pytest.importorskip("onnxscript")
    config = cfg()
    config.exporter = "dynamo"
    out = tmp_path / "dyn"
    res = export_bundle(
        embedding_bundle, out, cfg_export=config, texts=val_texts, int8=False, threads=1
    )
    assert res.meta["exporter"] == "dynamo" and res.files["int8"] is None
    texts = texts_of_many_lengths()
    got = OnnxRuntime.load(out, threads=1).logits(texts)
    np.testing.assert_allclose(got, torch_model.logits(texts), atol=1e-4, rtol=0)
    assert load_predictor(out, threads=1).info.runtime == "onnx"  # no int8 -> fp32


# --- ensure_export ---------------------------------------------------------------------------


def test_ensure_export_reuses_and_redoes_on_change(embedding_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(embedding_bundle, tmp_path / "bundle"))
    out = tmp_path / "export"
    assert ensure_export(bundle, out) == out  # two positional args: the app's call
    first = json.loads((out / EXPORT_FILE).read_text())
    assert first["parity"]["texts"].startswith("probe texts")
    assert ensure_export(bundle, out) == out
    assert json.loads((out / EXPORT_FILE).read_text()) == first  # reused, not redone
    cal = json.loads((bundle / "calibration.json").read_text())
    cal["temperature"]["temperature"] *= 2
    (bundle / "calibration.json").write_text(json.dumps(cal))
    ensure_export(bundle, out)
    second = json.loads((out / EXPORT_FILE).read_text())
    assert second["source"]["fingerprint"] == bundle_fingerprint(bundle)
    assert second["source"]["fingerprint"] != first["source"]["fingerprint"]
    assert load_predictor(out).info.temperature == pytest.approx(cal["temperature"]["temperature"])


def test_ensure_export_falls_back_to_fp32_when_int8_misses(
    embedding_bundle: Path, tmp_path: Path
) -> None:
    out = ensure_export(
        embedding_bundle, tmp_path / "x", cfg_export=cfg(int8_max_abs_diff=0.0), threads=1
    )
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["int8"] is False and meta["parity"]["fp32"]["passed"]
    assert "int8" not in meta["parity"]


def test_probe_texts_cover_every_label_and_truncation() -> None:
    texts = probe_texts(["cs", "math", "unknown-label"])
    assert len(texts) == 9 and len(set(texts)) == 9
    assert any("Computer Science" in t for t in texts)
    assert max(len(t.split()) for t in texts) > 128


def test_config_defaults_match_the_yaml() -> None:
    y = yaml.safe_load((CONFIG_DIR / "export" / "default.yaml").read_text())
    for key in ("model_dir", "output_dir", "report"):
        y.pop(key)
    assert ExportConfig.from_mapping(y) == ExportConfig()


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown export.parity keys \['max_row'\]"):
        ExportConfig.from_mapping({"parity": {"max_row": 3}})


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(CONFIG_DIR))
    return CliRunner()


def cli_overrides(prepared: Path, tmp_path: Path, **extra: Any) -> list[str]:
    values = {
        "train.processed_dir": prepared,
        "export.report": tmp_path / "reports" / "export.json",
        "export.parity.int8_max_abs_diff": 1.0,
        "export.parity.int8_min_agreement": 0.0,
        # as LOOSE_INT8: 1 flip in 7 probe papers of a random 32-wide BERT is no export bug
        "export.parity.int8_max_accuracy_drop": "null",
        "export.quantize.calibration_rows": 16,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def test_cli_exports_and_prints_parity(
    runner: CliRunner, embedding_bundle: Path, _prepared_once: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli_out"
    report = tmp_path / "parity.json"
    args = [
        "export",
        "--model",
        str(embedding_bundle),
        "--output",
        str(out),
        "--threads",
        "1",
        "--report",
        str(report),
        *cli_overrides(_prepared_once, tmp_path),
    ]
    res = runner.invoke(app, args, prog_name="paperops")
    assert res.exit_code == 0, res.output
    assert "fp32" in res.output and "int8" in res.output and "ok" in res.output
    assert (out / MODEL_FILE).is_file() and (out / INT8_FILE).is_file()
    figures = json.loads(report.read_text())
    assert figures["fp32"]["passed"] and figures["runtime"] == "onnx"


def test_cli_no_int8_and_default_report(
    runner: CliRunner, embedding_bundle: Path, _prepared_once: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli_fp32"
    args = [
        "export",
        "--no-int8",
        "--threads",
        "1",
        *cli_overrides(
            _prepared_once,
            tmp_path,
            **{"export.model_dir": embedding_bundle, "export.output_dir": out},
        ),
    ]
    res = runner.invoke(app, args, prog_name="paperops")
    assert res.exit_code == 0, res.output
    assert not (out / INT8_FILE).exists()
    assert json.loads((tmp_path / "reports" / "export.json").read_text())["fp32"]["passed"]


def test_cli_parity_failure_exits_1(
    runner: CliRunner, embedding_bundle: Path, _prepared_once: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli_fail"
    args = [
        "export",
        "--model",
        str(embedding_bundle),
        "--output",
        str(out),
        "--threads",
        "1",
        *cli_overrides(_prepared_once, tmp_path, **{"export.parity.int8_max_abs_diff": 0.0}),
    ]
    res = runner.invoke(app, args, prog_name="paperops")
    assert res.exit_code == 1, res.output
    assert "int8 export does not match PyTorch" in res.output and "FAIL" in res.output
    assert not out.exists()


def test_cli_missing_bundle_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["export", "--model", str(tmp_path / "none"), "--output", str(tmp_path / "o")],
        prog_name="paperops",
    )
    assert res.exit_code == 2 and "model.json not found" in res.output
