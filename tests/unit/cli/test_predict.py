"""`paperops predict` through the real CLI on real trained bundles: answers equal the Predictor's,
bad lines are reported by line, field and rule, and a failed run leaves no output file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from paperops.cli import app
from paperops.inference.predictor import load_predictor
from tests.conftest import CONFIG_DIR, DEFAULT_COUNTS, make_records, write_jsonl

ONE_THREAD = "serve.threads=1"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("PAPEROPS_CONFIG_DIR", str(CONFIG_DIR))
    monkeypatch.delenv("PAPEROPS_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PAPEROPS_LOG_FORMAT", raising=False)
    return CliRunner()


def predict(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["predict", "--no-progress", *args, ONE_THREAD], prog_name="paperops")


def papers(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Unseen papers (a different seed than training); every other one has an id."""
    out = []
    for i, r in enumerate(make_records(DEFAULT_COUNTS, seed=seed)[:n]):
        paper = {"title": r["title"], "abstract": r["abstract"]}
        if i % 2 == 0:
            paper["id"] = f"paper-{i}"
        out.append(paper)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("bundle_fixture", ["tfidf_bundle", "embedding_bundle"])
def test_predictions_match_the_predictor_in_input_order(
    runner: CliRunner, tmp_path: Path, bundle_fixture: str, request: pytest.FixtureRequest
) -> None:
    bundle: Path = request.getfixturevalue(bundle_fixture)
    inputs = papers(11)
    src = write_jsonl(tmp_path / "papers.jsonl", inputs)
    out = tmp_path / "out" / "preds.jsonl"  # the directory is created
    res = predict(
        runner, "-i", str(src), "-o", str(out), "--model", str(bundle), "--batch-size", "4",
        "--top-k", "2",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "predicted 11 papers, skipped 0" in res.stdout
    assert "papers/s" in res.stdout
    rows = read_jsonl(out)
    assert [r["line"] for r in rows] == list(range(1, 12))
    assert [r.get("id") for r in rows] == [p.get("id") for p in inputs]

    predictor = load_predictor(bundle, threads=1)
    expected = predictor.predict_papers([(p["title"], p["abstract"]) for p in inputs], top_k=2)
    for row, exp in zip(rows, expected, strict=True):
        assert row["model_version"] == predictor.info.version
        want = json.loads(json.dumps(exp.to_dict()))
        # same answers; probabilities to float precision (torch batches of 4 vs 11 differ ~1e-7,
        # which can move the 6th rounded decimal)
        assert (row["label"], row["name"]) == (want["label"], want["name"])
        assert row["confidence"] == pytest.approx(want["confidence"], abs=2e-6)
        for key in ("top", "prediction_set"):
            assert [s["label"] for s in row[key]] == [s["label"] for s in want[key]]
            assert [s["probability"] for s in row[key]] == pytest.approx(
                [s["probability"] for s in want[key]], abs=2e-6
            )
        assert len(row["top"]) == 2
    assert no_temp_files(out.parent)


def test_bad_line_stops_the_run_and_writes_nothing(
    runner: CliRunner, tmp_path: Path, tfidf_bundle: Path
) -> None:
    good = papers(4)
    lines: list[Any] = [good[0], good[1], {"title": "Fine", "abstract": "   "}, good[2]]
    src = write_jsonl(tmp_path / "papers.jsonl", lines)
    out = tmp_path / "preds.jsonl"
    out.write_text("an earlier run's output\n")  # must survive a failed run untouched
    res = predict(runner, "-i", str(src), "-o", str(out), "--model", str(tfidf_bundle))
    assert res.exit_code == 1
    assert "line 3: abstract:" in res.stderr
    assert "must contain text" in res.stderr and "string_blank" in res.stderr
    assert "--on-error skip" in res.stderr
    assert out.read_text() == "an earlier run's output\n"
    assert no_temp_files(tmp_path)


def test_skip_mode_scores_good_lines_and_lists_bad_ones(
    runner: CliRunner, tmp_path: Path, tfidf_bundle: Path
) -> None:
    good = papers(3)
    lines: list[Any] = [
        good[0],  # 1
        "{not json",  # 2
        {**good[1], "venue": "NeurIPS"},  # 3: extra field
        {"title": "T" * 61, "abstract": "An abstract."},  # 4: title over the limit (60 here)
        b'{"title": "Caf\xe9", "abstract": "latin-1 bytes"}',  # 5: not UTF-8
        {"title": 7, "abstract": "An abstract."},  # 6: wrong type
        "",  # 7: a blank line is not a paper
        {"abstract": "No title at all."},  # 8
        good[2],  # 9
    ]
    src = write_jsonl(tmp_path / "papers.jsonl", lines)
    out = tmp_path / "preds.jsonl"
    res = predict(
        runner, "-i", str(src), "-o", str(out), "--model", str(tfidf_bundle), "--on-error",
        "skip", "serve.limits.title_max_chars=60",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "predicted 2 papers, skipped 6" in res.stdout
    assert [r["line"] for r in read_jsonl(out)] == [1, 9]
    err = res.stderr
    assert "line 2: Invalid JSON" in err
    assert "line 3: venue: Extra inputs are not permitted (extra_forbidden)" in err
    assert "line 4: title: String should have at most 60 characters" in err
    assert "line 5: not valid UTF-8" in err
    assert "line 6: title: Input should be a valid string" in err
    assert "line 8: title: Field required (missing)" in err


def test_empty_input_writes_an_empty_output(
    runner: CliRunner, tmp_path: Path, tfidf_bundle: Path
) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    out = tmp_path / "preds.jsonl"
    res = predict(runner, "-i", str(src), "-o", str(out), "--model", str(tfidf_bundle))
    assert res.exit_code == 0, res.output
    assert "predicted 0 papers, skipped 0" in res.stdout
    assert out.is_file() and out.read_text() == ""


def test_missing_model_or_input_is_a_clear_error(
    runner: CliRunner, tmp_path: Path, tfidf_bundle: Path
) -> None:
    src = write_jsonl(tmp_path / "papers.jsonl", papers(2))
    out = tmp_path / "preds.jsonl"
    res = predict(runner, "-i", str(src), "-o", str(out), "--model", str(tmp_path / "nope"))
    assert res.exit_code == 2
    assert f"--model {tmp_path / 'nope'} does not exist" in res.stderr
    (tmp_path / "empty_dir").mkdir()
    res = predict(runner, "-i", str(src), "-o", str(out), "--model", str(tmp_path / "empty_dir"))
    assert res.exit_code == 2
    assert "not a model bundle" in res.stderr and "empty_dir" in res.stderr
    assert not out.exists()

    res = predict(runner, "-i", str(tmp_path / "missing.jsonl"), "-o", str(out))
    assert res.exit_code == 2
    assert "--input" in res.stderr and "missing.jsonl" in res.stderr

    res = predict(
        runner, "-i", str(src), "-o", str(out), "--model", str(tfidf_bundle), "--on-error", "ignore"
    )
    assert res.exit_code == 2 and "--on-error must be one of raise, skip" in res.stderr

    both = ["--model", str(tfidf_bundle), "--ref", "3"]
    res = predict(runner, "-i", str(src), "-o", str(out), *both)
    assert res.exit_code == 2 and "either --model or --ref" in res.stderr


def test_gzip_input_and_output_equal_input_refused(
    runner: CliRunner, tmp_path: Path, tfidf_bundle: Path
) -> None:
    src = write_jsonl(tmp_path / "papers.jsonl.gz", papers(3), gzip=True)
    out = tmp_path / "preds.jsonl"
    res = predict(runner, "-i", str(src), "-o", str(out), "--model", str(tfidf_bundle))
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(out)) == 3
    res = predict(runner, "-i", str(out), "-o", str(out), "--model", str(tfidf_bundle))
    assert res.exit_code == 1 and "is the input file" in res.stderr


def test_explain_adds_the_api_explanation_to_every_row(
    runner: CliRunner, tmp_path: Path, tfidf_bundle: Path
) -> None:
    """`--explain` runs the API's explainer (`paperops.inference.explain`) on every paper."""
    from paperops.inference.explain import make_explainer

    inputs = papers(5)
    src = write_jsonl(tmp_path / "papers.jsonl", inputs)
    out = tmp_path / "preds.jsonl"
    args = ["-i", str(src), "-o", str(out), "--model", str(tfidf_bundle), "--explain"]
    res = predict(runner, *args, "serve.explain.max_terms=4")
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out)
    predictor = load_predictor(tfidf_bundle, threads=1)
    pairs = [(p["title"], p["abstract"]) for p in inputs]
    want = make_explainer(predictor, max_terms=4).explain(pairs, [r["label"] for r in rows])
    assert [r["explanation"] for r in rows] == [json.loads(json.dumps(w.to_dict())) for w in want]
    assert all(r["explanation"]["method"] == "linear" for r in rows)
    assert all(0 < len(r["explanation"]["terms"]) <= 4 for r in rows)
    refused = predict(runner, *args, "serve.explain.methods=[occlusion]")
    assert refused.exit_code != 0 and "needs the linear method" in refused.stderr
    assert "family tfidf" in refused.stderr


def test_cross_lists_by_default_with_a_head_and_refused_without(
    runner: CliRunner, tmp_path: Path, category_bundle: Path, tfidf_bundle: Path
) -> None:
    """A category bundle's rows carry the API's cross_lists unless --no-cross-lists; asking a
    model without a head is a one-line error naming it, and its rows keep the old shape."""
    from tests.conftest import CATEGORY_COUNTS

    inputs = [
        {"title": r["title"], "abstract": r["abstract"]}
        for r in make_records(CATEGORY_COUNTS, seed=31)[:9]
    ]
    src = write_jsonl(tmp_path / "papers.jsonl", inputs)
    out = tmp_path / "preds.jsonl"
    res = predict(runner, "-i", str(src), "-o", str(out), "--model", str(category_bundle),
                  "--batch-size", "4")  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out)
    want = load_predictor(category_bundle, threads=1).predict_papers(
        [(p["title"], p["abstract"]) for p in inputs], 3, cross_lists=True
    )
    got = [r["cross_lists"] for r in rows]
    assert got == [json.loads(json.dumps(w.to_dict()))["cross_lists"] for w in want]
    assert sum(map(len, got)) > 0
    off = tmp_path / "off.jsonl"
    res = predict(runner, "-i", str(src), "-o", str(off), "--model", str(category_bundle),
                  "--no-cross-lists")  # fmt: skip
    assert res.exit_code == 0 and all("cross_lists" not in r for r in read_jsonl(off))
    refused = predict(runner, "-i", str(src), "-o", str(off), "--model", str(tfidf_bundle),
                      "--cross-lists")  # fmt: skip
    assert refused.exit_code != 0 and "has no cross-list head" in refused.stderr
    assert "(tfidf)" in refused.stderr
    res = predict(runner, "-i", str(src), "-o", str(off), "--model", str(tfidf_bundle))
    assert res.exit_code == 0 and all("cross_lists" not in r for r in read_jsonl(off))
