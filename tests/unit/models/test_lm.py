"""The LM family: tokenizer, packing, training, save/load (tied head), decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from paperops.inference.decoding import Sampler, SamplingParams, TorchDecoder, generate, left_pad
from paperops.models.base import ModelLoadError
from paperops.models.lm import EOS, CausalLM, load_lm, make_tiny_lm, train_tokenizer
from paperops.models.lm_module import LMConfig, pack_blocks

TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 4,
    "patience": 10,
    "enable_progress_bar": False,
    "num_threads": 1,
    "log_every_n_steps": 1,
    "deterministic": True,
    "num_sanity_val_steps": 0,
    "enable_model_summary": False,
}
SUBJECTS = ["fever", "rash", "cough", "headache", "back pain", "insomnia", "allergy", "flu"]


def corpus(n: int = 120, offset: int = 0) -> list[str]:
    """Short question-like documents with a learnable structure."""
    out = []
    for i in range(offset, offset + n):
        s = SUBJECTS[i % len(SUBJECTS)]
        out.append(f"What should I take for {s} after {i % 5 + 1} days? Is {s} serious?")
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny", corpus(), train_steps=40)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> CausalLM:
    return load_lm(tiny_dir)


def test_tokenizer_round_trip_and_save_load(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tok = train_tokenizer(corpus(), vocab_size=300, min_frequency=1)
    assert tok.token_to_id(EOS) == 0 and tok.get_vocab_size() <= 300
    text = "What should I take for a fever? Ünïcödé — and emoji 🙂 too"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text  # byte-level: nothing is unknown, nothing is lost
    tok.save(str(tmp_path / "tokenizer.json"))
    again = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert again.encode(text).ids == ids


def test_pack_blocks() -> None:
    blocks = pack_blocks([[1, 2, 3], [4, 5]], eos=0, block=4)
    assert blocks == [[0, 1, 2, 3], [0, 4, 5, 0]]  # every document follows an eos
    assert pack_blocks([[1, 2, 3]], eos=0, block=3, keep_tail=True) == [[0, 1, 2], [3, 0]]
    assert pack_blocks([[1, 2, 3]], eos=0, block=3) == [[0, 1, 2]]  # training drops the tail


def test_config_rejects_unknown_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="unknown model keys \\['n_layers'\\]"):
        LMConfig.from_dict({"family": "lm", "n_layers": 2})
    with pytest.raises(ValueError, match="n_embd"):
        LMConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="family must be 'lm'"):
        LMConfig(family="tfidf")


def test_training_lowers_loss_and_keeps_best(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = corpus(160), corpus(40, offset=1000)
    cfg = LMConfig(
        vocab_size=300, n_layer=1, n_embd=32, n_head=2, context_length=32, dropout=0.0,
        lr=5e-3, warmup_steps=2, batch_size=8,
    )  # fmt: skip
    lm = CausalLM.from_config(cfg, train_tokenizer(train, 300, 1))
    before = lm.perplexity(val)
    summary = lm.fit(train, val, trainer_cfg=TRAINER, loggers=[], work_dir=tmp_path, seed=0)
    after = lm.perplexity(val)
    assert after["loss"] < before["loss"] - 1.0, (before, after)
    assert summary["monitor"] == "val_loss" and summary["best_checkpoint"]
    # the kept weights are the best epoch's: its val_loss is the held-out loss we measure
    assert after["loss"] == pytest.approx(summary["best_score"], abs=1e-4)


def test_save_load_identical_logits_and_tied_head(tiny_dir: Path, tmp_path: Path) -> None:
    lm = load_lm(tiny_dir)
    m = lm.model
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    ids = torch.tensor([lm.prompt_ids("What should I take for fever")])
    with torch.no_grad():
        before = m(ids).logits
    lm.save(tmp_path / "again")
    again = load_lm(tmp_path / "again")
    with torch.no_grad():
        after = again.model(ids).logits
    assert torch.equal(before, after)
    assert again.model.lm_head.weight.data_ptr() == again.model.transformer.wte.weight.data_ptr()
    # the trained head is the trained embedding matrix, not a fresh initialisation
    assert torch.equal(again.model.lm_head.weight, lm.model.transformer.wte.weight)


def test_load_refuses_missing_weights(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    state = load_file(str(broken / "model.safetensors"))
    dropped = next(k for k in state if "ln_f" in k)
    del state[dropped]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="would be silently re-initialised"):
        load_lm(broken)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("model.json", "not a model bundle"),
        ("tokenizer.json", "has no tokenizer"),
        ("model.safetensors", "model.safetensors not found"),
    ],
)
def test_load_names_the_missing_file(
    tiny_dir: Path, tmp_path: Path, damage: str, message: str
) -> None:
    import shutil

    d = tmp_path / "b"
    shutil.copytree(tiny_dir, d)
    (d / damage).unlink()
    with pytest.raises(ModelLoadError, match=message):
        load_lm(d)


def test_load_refuses_a_classifier_bundle(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"family": "tfidf", "labels": ["cs"]}))
    with pytest.raises(ModelLoadError, match="not a language model"):
        load_lm(tmp_path)


def test_pretrained_path_fine_tunes_local_weights(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = LMConfig(pretrained=str(tiny_dir), lr=1e-3, warmup_steps=1, batch_size=8)
    from paperops.train.lm import build_tokenizer

    tok = build_tokenizer(cfg, corpus())
    lm = CausalLM.from_config(cfg, tok)
    base = load_lm(tiny_dir)
    assert torch.equal(lm.model.transformer.wte.weight, base.model.transformer.wte.weight)
    assert lm.context_length == base.context_length  # the pretrained config wins
    lm.fit(corpus(80), corpus(20, 500), trainer_cfg={**TRAINER, "max_epochs": 1},
           loggers=[], work_dir=tmp_path, seed=0)  # fmt: skip
    assert not torch.equal(lm.model.transformer.wte.weight, base.model.transformer.wte.weight)


def test_pretrained_missing_locally_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local"):
        CausalLM.from_config(
            LMConfig(pretrained="paperops-test/no-such-model"), train_tokenizer(corpus(), 300, 1)
        )


# ---- decoding ----------------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed(tiny: CausalLM) -> None:
    be = TorchDecoder(tiny)
    p = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    prompt = tiny.prompt_ids("What should I take for")
    a, b = list(generate(be, prompt, p)), list(generate(be, prompt, p))
    assert a == b and len(a) > 0
    others = {tuple(generate(be, prompt, SamplingParams(20, 1.5, seed=s))) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_greedy_matches_transformers_generate(tiny: CausalLM) -> None:
    be = TorchDecoder(tiny)
    prompt = tiny.prompt_ids("Is fever")
    ours = list(generate(be, prompt, SamplingParams(max_new_tokens=12, top_k=1)))
    ref = tiny.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
        do_sample=False,
        max_new_tokens=12,
        pad_token_id=tiny.eos_token_id,
    )[0, len(prompt) :].tolist()
    if tiny.eos_token_id in ref:
        ref = ref[: ref.index(tiny.eos_token_id)]
    assert ours == ref


def test_left_padded_batch_matches_single_rows(tiny: CausalLM) -> None:
    be = TorchDecoder(tiny)
    rows = [tiny.prompt_ids("What should I take for a cough"), tiny.prompt_ids("Is")]
    logits, past = be.forward(*left_pad(rows, tiny.eos_token_id), None)
    for i, r in enumerate(rows):
        ids = torch.tensor([r])
        solo, _ = be.forward(ids, torch.ones_like(ids), torch.arange(len(r))[None], None)
        assert torch.allclose(logits[i], solo[0], atol=1e-4)
    assert past[0][0].shape[2] == len(rows[0])


def test_stops_at_max_new_tokens_and_context(tiny: CausalLM) -> None:
    be = TorchDecoder(tiny)
    never_eos = SamplingParams(max_new_tokens=5, top_k=1)
    out = list(generate(be, tiny.prompt_ids("What"), never_eos))
    assert len(out) <= 5
    long_prompt = [tiny.eos_token_id] + [5] * (tiny.context_length - 3)
    assert len(list(generate(be, long_prompt, SamplingParams(50, seed=1)))) <= 2
    with pytest.raises(ValueError, match="context"):
        list(generate(be, [5] * tiny.context_length, never_eos))
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    stopped = list(
        generate(be, tiny.prompt_ids("What"), SamplingParams(30, seed=3), should_stop=stop)
    )
    assert len(stopped) <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ],
)
def test_sampling_params_validate(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{"max_new_tokens": 4, **kwargs})


def test_top_p_and_top_k_restrict_the_support() -> None:
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    # nucleus 0.5: only the most likely token has the mass
    picks = {Sampler(SamplingParams(1, top_p=0.5, seed=s)).next_token(logits) for s in range(30)}
    assert picks == {0}
    picks = {Sampler(SamplingParams(1, top_k=2, seed=s)).next_token(logits) for s in range(60)}
    assert picks == {0, 1}
    assert Sampler(SamplingParams(1, seed=None)).seed >= 0  # a random seed is reported


def test_ignore_eos_runs_to_max_new_tokens(tiny: CausalLM) -> None:
    be = TorchDecoder(tiny)
    prompt = tiny.prompt_ids("What")
    for seed in range(5):
        params = SamplingParams(max_new_tokens=24, seed=seed, ignore_eos=True)
        assert len(list(generate(be, prompt, params))) == 24
