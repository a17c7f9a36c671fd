"""ONNX export of the GPT-2 decoder with past key values (`paperops export` of an `lm` bundle)
and its serving backend `OnnxDecoder`, against the PyTorch backend on a tiny trained model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

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
from paperops.export.common import ExportError  # noqa: E402
from paperops.export.lm import (  # noqa: E402
    DECODER_FILE,
    INT8_FILE,
    LMExportConfig,
    ensure_lm_export,
    export_lm,
    is_lm_bundle,
)
from paperops.inference.decoding import SamplingParams, TorchDecoder, generate, left_pad  # noqa: E402
from paperops.inference.onnx_decoder import OnnxDecoder  # noqa: E402
from paperops.models.base import ModelLoadError  # noqa: E402
from paperops.models.lm import load_lm, make_tiny_lm  # noqa: E402

TEXTS = [
    f"What is the treatment for condition {i}? Patients with fever and cough often ask this."
    for i in range(40)
] + [
    f"Title: Colourings of graphs {i}\nAbstract: We prove bounds on the chromatic number."
    for i in range(40)
]
# loose: these only check that the tiny export's figures are sane, not a quality bar
CFG = {"int8_min_agreement": 0.5, "int8_max_ppl_increase": 0.5, "steps": 8, "prompts": 4}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "bundle", TEXTS, train_steps=30)


@pytest.fixture(scope="module")
def exported(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm_export") / "onnx"
    export_lm(bundle, out, cfg=CFG, texts=TEXTS[::8], threads=1)
    return out


@pytest.fixture(scope="module")
def torch_backend(bundle: Path) -> TorchDecoder:
    return TorchDecoder(load_lm(bundle))


def _prompts(backend: Any, texts: list[str]) -> list[list[int]]:
    return [backend.prompt_ids(t) for t in texts]


def test_export_dir_is_self_contained_and_reports_parity(exported: Path, bundle: Path) -> None:
    for name in (DECODER_FILE, INT8_FILE, "model.json", "tokenizer.json", "config.json"):
        assert (exported / name).is_file(), name
    assert not (exported / "model.safetensors").exists()  # serving needs no torch weights
    meta = json.loads((exported / "export.json").read_text())
    assert meta["family"] == "lm" and meta["runtime"] == "onnx" and meta["int8"] is True
    assert is_lm_bundle(bundle) and is_lm_bundle(exported)
    p = meta["parity"]
    assert p["fp32"]["passed"] and p["fp32"]["max_abs_diff"] < 1e-4
    assert p["fp32"]["agreement"] == 1.0
    assert p["int8"]["passed"] and 0.5 <= p["int8"]["agreement"] <= 1.0
    ppl = p["perplexity"]
    assert ppl["tokens"] > 0 and abs(ppl["fp32"] / ppl["torch"] - 1) < 1e-4


def test_fp32_matches_torch_with_left_padding_and_past(
    exported: Path, torch_backend: TorchDecoder
) -> None:
    """Batch 2 (one row left-padded): prefill + 5 decode steps, past fed back each step."""
    onnx = OnnxDecoder.load(exported, int8=False, threads=1)
    assert onnx.kind == "onnx"
    for name in ("eos_token_id", "context_length", "vocab_size", "n_layer", "n_head", "head_dim"):
        assert getattr(onnx, name) == getattr(torch_backend, name), name
    rows = _prompts(onnx, ["Title: Colourings", "What is the treatment for condition 3?"])
    assert len(rows[0]) != len(rows[1])
    ids, mask, pos = left_pad(rows, onnx.eos_token_id)
    r, r_past = torch_backend.forward(ids, mask, pos, None)
    g, g_past = onnx.forward(ids, mask, pos, None)
    assert g.dtype == torch.float32 and g.shape == (2, onnx.vocab_size)
    assert len(g_past) == onnx.n_layer
    assert g_past[0][0].shape == (2, onnx.n_head, ids.shape[1], onnx.head_dim)
    torch.testing.assert_close(g, r, atol=1e-4, rtol=0)
    last = pos[:, -1:]
    for _ in range(5):
        tok = r.argmax(-1, keepdim=True)
        mask, last = torch.cat([mask, torch.ones_like(tok)], 1), last + 1
        r, r_past = torch_backend.forward(tok, mask, last, r_past)
        g, g_past = onnx.forward(tok, mask, last, g_past)
        torch.testing.assert_close(g, r, atol=1e-4, rtol=0)
        # keys/values of real positions match; those of padding (never attended to) may not:
        # a fully masked attention row is backend-defined
        real = mask.bool()[:, None, :, None].expand_as(g_past[0][0])
        for (gk, gv), (rk, rv) in zip(g_past, r_past, strict=True):
            torch.testing.assert_close(gk[real], rk[real], atol=1e-4, rtol=0)
            torch.testing.assert_close(gv[real], rv[real], atol=1e-4, rtol=0)


def test_past_is_interchangeable_between_backends(
    exported: Path, torch_backend: TorchDecoder
) -> None:
    onnx = OnnxDecoder.load(exported, int8=False, threads=1)
    ids, mask, pos = left_pad(_prompts(onnx, ["Title: Colourings of graphs"]), onnx.eos_token_id)
    r, r_past = torch_backend.forward(ids, mask, pos, None)
    tok = r.argmax(-1, keepdim=True)
    mask = torch.cat([mask, torch.ones_like(tok)], 1)
    a, _ = onnx.forward(tok, mask, pos[:, -1:] + 1, r_past)
    b, _ = torch_backend.forward(tok, mask, pos[:, -1:] + 1, r_past)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_generate_gives_the_same_tokens_on_both_backends(
    exported: Path, torch_backend: TorchDecoder
) -> None:
    onnx = OnnxDecoder.load(exported, int8=False, threads=1)
    prompt = onnx.prompt_ids("What is the treatment")
    for params in (
        SamplingParams(max_new_tokens=20, top_k=1),
        SamplingParams(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=7),
    ):
        assert list(generate(onnx, prompt, params)) == list(generate(torch_backend, prompt, params))


def test_int8_loads_and_agrees_on_greedy_tokens(
    exported: Path, torch_backend: TorchDecoder
) -> None:
    q8 = OnnxDecoder.load(exported, int8=True, threads=1)
    assert q8.kind == "onnx-int8"
    greedy = SamplingParams(max_new_tokens=16, top_k=1)
    agree = total = 0
    for text in ("What is the treatment", "Title: Colourings of", "Patients with fever"):
        prompt = q8.prompt_ids(text)
        a = list(generate(q8, prompt, greedy))
        b = list(generate(torch_backend, prompt, greedy))
        n = min(len(a), len(b))
        # tokens up to the first divergence (after one, the contexts differ)
        same = next((i for i in range(n) if a[i] != b[i]), n)
        agree, total = agree + same, total + max(n, 1)
    assert agree / total >= 0.5


def test_fp32_only_export_and_missing_int8(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp32"
    meta = export_lm(bundle, out, cfg=CFG, int8=False)
    assert meta["int8"] is False and "int8" not in meta["parity"]
    assert not (out / INT8_FILE).exists()
    with pytest.raises(ModelLoadError, match="no int8 decoder"):
        OnnxDecoder.load(out, int8=True)


def _copy(exported: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(exported, dst)
    return dst


def test_corrupt_or_missing_decoder_is_a_clear_load_error(exported: Path, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    (d / DECODER_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match=r"decoder\.onnx cannot be loaded.*re-export"):
        OnnxDecoder.load(d, int8=False)
    (d / INT8_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"decoder\.int8\.onnx not found"):
        OnnxDecoder.load(d, int8=True)
    (d / "export.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"export\.json is corrupt"):
        OnnxDecoder.load(d)
    (d / "export.json").unlink()
    with pytest.raises(ModelLoadError, match="not an export"):
        OnnxDecoder.load(d)


def test_a_classifier_export_is_refused(exported: Path, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    meta = json.loads((d / "export.json").read_text())
    (d / "export.json").write_text(json.dumps(meta | {"family": "embedding"}))
    with pytest.raises(ModelLoadError, match="not 'lm'"):
        OnnxDecoder.load(d)


def test_a_graph_of_another_model_is_refused(exported: Path, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    meta = json.loads((d / "export.json").read_text())
    (d / "export.json").write_text(json.dumps(meta | {"n_layer": meta["n_layer"] + 1}))
    with pytest.raises(ModelLoadError, match=r"inputs .* not those of a 3-layer decoder"):
        OnnxDecoder.load(d)


def test_parity_failure_raises_and_keeps_the_previous_export(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("old")
    with pytest.raises(ExportError, match="fp32 decoder does not match") as err:
        export_lm(bundle, out, cfg=CFG | {"fp32_max_abs_diff": -1.0}, int8=False)
    assert err.value.stage == "fp32" and "fp32" in err.value.parity
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp left
    with pytest.raises(ExportError, match="int8 decoder does not match"):
        # (int8 may agree 100% on this tiny model: the perplexity gate is the one to trip)
        export_lm(bundle, tmp_path / "q", cfg=CFG | {"int8_max_ppl_increase": -1.0}, texts=TEXTS)
    assert not (tmp_path / "q").exists()


def test_ensure_export_reuses_and_falls_back_to_fp32(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import paperops.export.lm as export_lm_mod

    out = tmp_path / "ensured"
    ensure_lm_export(bundle, out, cfg=CFG)
    first = json.loads((out / "export.json").read_text())
    assert first["int8"] is True
    ensure_lm_export(bundle, out, cfg=CFG)  # same bundle: reused, not redone
    assert json.loads((out / "export.json").read_text())["created_at"] == first["created_at"]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(export_lm_mod, "_quantize", broken)
    (out / "export.json").write_text("{}")  # invalid: re-exported, int8 fails -> fp32 only
    ensure_lm_export(bundle, out, cfg=CFG)
    meta = json.loads((out / "export.json").read_text())
    assert meta["int8"] is False and meta["parity"]["fp32"]["passed"]
    assert OnnxDecoder.load(out).kind == "onnx"


def test_missing_bundle_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        export_lm(tmp_path / "nope", tmp_path / "out")


def test_config_defaults_match_the_yaml() -> None:
    y = yaml.safe_load((CONFIG_DIR / "export" / "default.yaml").read_text())
    assert LMExportConfig.from_mapping(y["lm"]) == LMExportConfig()
    with pytest.raises(ValueError, match=r"unknown export\.lm keys"):
        LMExportConfig.from_mapping({"step": 3})


def test_cli_dispatches_an_lm_bundle(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(CONFIG_DIR))
    corpus = tmp_path / "corpus"  # a prepared corpus: its val split gives the perplexity delta
    corpus.mkdir()
    pd.DataFrame({"text": TEXTS[1::9]}).to_parquet(corpus / "val.parquet")
    out, report = tmp_path / "cli", tmp_path / "report.json"
    args = ["export", "--model", str(bundle), "--output", str(out), "--threads", "1"]
    args += ["--report", str(report), "export.lm.steps=4", "export.lm.int8_min_agreement=0.5"]
    args += ["export.lm.int8_max_ppl_increase=null", f"corpus.output_dir={corpus}"]
    res = CliRunner().invoke(app, args, prog_name="paperops")
    assert res.exit_code == 0, res.output
    assert "fp32" in res.output and "int8" in res.output and "perplexity" in res.output
    assert (out / DECODER_FILE).is_file() and (out / INT8_FILE).is_file()
    figures = json.loads(report.read_text())
    assert figures["family"] == "lm" and figures["fp32"]["passed"]
    assert figures["perplexity"]["texts"] == len(TEXTS[1::9])
