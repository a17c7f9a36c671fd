"""`paperops generate` through a real typer app on a tiny LM bundle the test builds: a fixed seed
reproduces the text (streamed or not), the summary names the seed, bad options fail with exit
code 2 and the option's name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from paperops.cli import generate as gen_cmd
from paperops.inference.generator import text_pieces
from tests.conftest import CONFIG_DIR

TEXTS = [
    "Can I take ibuprofen with a cold? Yes, ibuprofen is fine for most adults.",
    "What are the symptoms of flu? Fever, cough and aches are common symptoms.",
    "Title: Graph Neural Networks\nAbstract: We propose a model for graphs.",
    "Title: Dark Matter Halos\nAbstract: We observe a sample of galaxies.",
] * 8


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from paperops.models.lm import make_tiny_lm

    torch.set_num_threads(1)
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "lm", TEXTS, train_steps=30)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(CONFIG_DIR))
    monkeypatch.delenv("PAPEROPS_LOG_LEVEL", raising=False)
    return CliRunner()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    gen_cmd.register(app)

    @app.command("noop")  # a second command keeps `generate` a subcommand, as in paperops
    def noop() -> None:
        pass

    return app


def run(runner: CliRunner, cli: typer.Typer, *args: str) -> object:
    return runner.invoke(cli, ["generate", *args, "serve.threads=1"], prog_name="paperops")


def test_same_seed_same_text_streamed_or_not(
    runner: CliRunner, cli: typer.Typer, tiny_lm: Path
) -> None:
    common = ["Can I take", "--model", str(tiny_lm), "--seed", "7", "--max-new-tokens", "20"]
    first = run(runner, cli, *common)
    assert first.exit_code == 0, first.output
    second = run(runner, cli, *common, "--no-stream")
    assert second.exit_code == 0, second.output
    assert first.stdout == second.stdout
    assert first.stdout.strip()  # a trained tiny model writes something
    assert "seed 7" in first.stderr and "tokens/s" in first.stderr
    other = run(runner, cli, *common[:-3], "9", "--max-new-tokens", "20")
    assert other.exit_code == 0 and "seed 9" in other.stderr


def test_the_text_is_what_generate_yields(
    runner: CliRunner, cli: typer.Typer, tiny_lm: Path
) -> None:
    """The CLI prints exactly the decoded tokens of inference.decoding for the same seed."""
    from paperops.inference.decoding import SamplingParams, TorchDecoder, generate
    from paperops.models.lm import load_lm

    lm = load_lm(tiny_lm)
    params = SamplingParams(max_new_tokens=15, temperature=0.8, top_p=0.95, seed=3)
    ids = list(generate(TorchDecoder(lm), lm.prompt_ids("Title:"), params))
    res = run(
        runner, cli, "Title:", "--model", str(tiny_lm), "--seed", "3", "--max-new-tokens", "15"
    )
    assert res.exit_code == 0, res.output
    assert res.stdout == lm.decode(ids) + "\n"
    assert f"{len(ids)} tokens" in res.stderr


def test_random_seed_is_reported(runner: CliRunner, cli: typer.Typer, tiny_lm: Path) -> None:
    res = run(runner, cli, "Title:", "--model", str(tiny_lm), "--max-new-tokens", "5")
    assert res.exit_code == 0, res.output
    seed = int(res.stderr.split("seed ")[1].split()[0])
    again = run(
        runner, cli, "Title:", "--model", str(tiny_lm), "--max-new-tokens", "5", "--seed", str(seed)
    )
    assert again.stdout == res.stdout


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--temperature", "-1"], "--temperature must be > 0"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-k", "-2"], "--top-k must be >= 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    ],
)
def test_bad_sampling_options_exit_2_naming_the_option(
    runner: CliRunner, cli: typer.Typer, tiny_lm: Path, args: list[str], option: str
) -> None:
    res = run(runner, cli, "Title:", "--model", str(tiny_lm), *args)
    assert res.exit_code == 2
    assert option in res.stderr
    assert res.stdout == ""


def test_bad_prompt_and_model_are_explained(
    runner: CliRunner, cli: typer.Typer, tiny_lm: Path, tmp_path: Path
) -> None:
    res = run(runner, cli, "   ", "--model", str(tiny_lm))
    assert res.exit_code == 2 and "PROMPT is empty" in res.stderr
    res = run(runner, cli, "word " * 200, "--model", str(tiny_lm))
    assert res.exit_code == 2 and "context is 64" in res.stderr
    res = run(runner, cli, "Title:", "--model", str(tmp_path / "missing"))
    assert res.exit_code == 2 and "missing" in res.stderr
    res = run(runner, cli, "Title:", "--model", str(tiny_lm), "--ref", "champion")
    assert res.exit_code == 2 and "either --model or --ref" in res.stderr


def test_pieces_concatenate_to_the_decoded_text() -> None:
    """A character split over two byte tokens is shown once it is whole."""
    table = {1: b"a", 2: b"\xc3", 3: b"\xa9", 4: b"b"}

    def decode(ids: list[int]) -> str:
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    pieces = list(text_pieces(decode, [1, 2, 3, 4]))
    assert [p for _, p in pieces] == ["a", "", "é", "b"]
    pieces = list(text_pieces(decode, [1, 2]))  # stopped mid-character
    assert "".join(p for _, p in pieces) == decode([1, 2])


def test_example_prompts_cover_both_corpora_and_the_demo_picks_by_corpus() -> None:
    from paperops.cli.demo import load_prompts, pick_prompt
    from paperops.serve.settings import GeneratorSettings

    prompts = load_prompts()
    assert 4 <= len(prompts) <= 6
    assert len({p["id"] for p in prompts}) == len(prompts)
    assert {p["corpus"] for p in prompts} == {"mqp", "arxiv"}
    limit = GeneratorSettings().prompt_max_chars
    assert all(p["prompt"].strip() and len(p["prompt"]) <= limit and p["label"] for p in prompts)
    assert any(p["prompt"].startswith("Title: ") for p in prompts)
    assert pick_prompt(prompts, {"corpus": "arxiv"})["corpus"] == "arxiv"
    assert pick_prompt(prompts, {"corpus": "mqp"})["corpus"] == "mqp"
    assert pick_prompt(prompts, {"name": "lm"}) == prompts[0]  # corpus unknown: the first
