"""`paperops data harvest` against the fake OAI-PMH server, then `data prepare` on what it wrote:
the harvester's output is a valid input of the pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paperops.cli import app
from tests.fakes.oai_server import FakeOAIServer, FakeRecord, Fault

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TOPICS = {
    "cs.LG": "gradient descent for neural networks",
    "quant-ph": "entangled qubits",
    "math.AG": "moduli of curves",
    "chao-dyn": "chaotic maps and attractors",
}


def _records(n: int) -> list[FakeRecord]:
    cats = list(TOPICS)
    return [
        FakeRecord(
            id=f"2101.{i:05d}",
            title=f"Study {i}: {TOPICS[cats[i % 4]]}",
            abstract=f"We analyse {TOPICS[cats[i % 4]]} in regime {i}, finding {i * 3}.",
            categories=f"{cats[i % 4]} stat.ML",
        )
        for i in range(n)
    ]


def test_harvest_then_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(REPO / "configs"))
    out = tmp_path / "harvest.jsonl"
    runner = CliRunner()
    with FakeOAIServer(
        _records(60), page_size=25, faults={2: Fault.http(503, retry_after="0")}
    ) as srv:
        args = [
            "data",
            "harvest",
            "--out",
            str(out),
            "--base-url",
            srv.base_url,
            "--min-interval",
            "0",
            "--set",
            "cs",
        ]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "60 in" in res.output and "complete" in res.output
        again = runner.invoke(app, args)  # complete: nothing fetched again
        assert again.exit_code == 0, again.output
        n_requests = len(srv.requests)
    assert n_requests == 4  # 3 pages + one 503 retry; the second run sent nothing
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"2101.{i:05d}" for i in range(60)]

    processed = tmp_path / "processed"
    res = runner.invoke(
        app,
        [
            "data",
            "prepare",
            f"data.raw_paths={out}",
            f"data.output_dir={processed}",
            "data.min_count=10",
        ],
    )
    assert res.exit_code == 0, res.output
    labels = json.loads((processed / "labels.json").read_text())
    assert sorted(e["label"] for e in labels["labels"]) == ["cs", "math", "nlin", "quant-ph"]


def test_harvest_bad_argument_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "data",
            "harvest",
            "--out",
            str(tmp_path / "x.jsonl"),
            "--base-url",
            "http://127.0.0.1:9",
            "--from",
            "yesterday",
        ],
    )
    assert res.exit_code == 2
    assert "yesterday" in res.output
    assert not os.path.exists(tmp_path / "x.jsonl")
