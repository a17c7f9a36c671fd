"""`explain=true` on /v1/classify through real servers on 127.0.0.1: the tfidf model explains
with exact term contributions that point into the text as sent, a runtime without linear weights
explains by occlusion, the answer is unchanged without the flag, and what cannot be explained is
a 422 naming the model and the setting (never a 500)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from paperops.serve.app import create_app
from paperops.serve.settings import ExplainSettings, ServeSettings
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.serve_helpers import GatedRuntime, serve_app, serve_copy, tiny_predictor
from tests.integration.test_api import check_error

pytestmark = pytest.mark.integration

PAPERS = [
    {"title": r["title"], "abstract": r["abstract"], "id": f"p{i}"}
    for i, r in enumerate(make_records(DEFAULT_COUNTS, seed=17)[:5])
]
UNKNOWN = {"title": "Zqxv Wvvq", "abstract": "Plmk ørbk ŋŋŋ. Qqqq!"}


@pytest.fixture(scope="module")
def url(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_copy(tfidf_bundle, tmp_path_factory.mktemp("explain_api")) as u:
        yield u


def classify(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + "/v1/classify", json=body, timeout=30)


def test_terms_are_exact_shares_that_point_into_the_text(url: str) -> None:
    papers = [*PAPERS, UNKNOWN]
    plain = classify(url, {"papers": papers}).json()
    r = classify(url, {"papers": papers, "explain": True, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(plain) and body["model"] == plain["model"]
    for res, old, paper in zip(body["results"], plain["results"], papers, strict=True):
        e = res.pop("explanation")
        assert res == old  # the same answer, with its explanation beside it
        assert e["method"] == "linear" and e["label"] == res["label"]
        total = sum(t["weight"] for t in e["terms"]) + sum(p["weight"] for p in e["parts"])
        assert total == pytest.approx(e["score"], abs=1e-4)  # terms + parts = the logit
        assert [p["name"] for p in e["parts"]] == ["intercept", "other terms"]
        for t in e["terms"]:
            assert t["weight"] > 0 and t["spans"][0] == {
                "field": t["field"],
                "start": t["start"],
                "end": t["end"],
            }
            for s in t["spans"]:
                shown = paper[s["field"]][s["start"] : s["end"]]
                assert shown and shown.lower() in t["text"].lower()
    unknown = e  # the last paper: no word of it is in the vocabulary
    assert unknown["terms"] == [] and "vocabulary" in unknown["reason"]
    assert all("explanation" not in res for res in plain["results"])  # unchanged without it


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"papers": PAPERS[:1], "explain": "true"}, "valid boolean"),
        ({"papers": PAPERS[:1] * 9, "explain": True}, "at most 8 papers per request"),
    ],
    ids=["not-a-bool", "too-many-papers"],
)
def test_bad_explain_requests_are_422(url: str, body: dict[str, Any], words: str) -> None:
    check_error(classify(url, body), 422, ["body", "explain"], words)


def test_the_schema_documents_explain(url: str) -> None:
    schema = httpx.get(url + "/openapi.json", timeout=10).json()["components"]["schemas"]
    assert schema["ClassifyRequest"]["properties"]["explain"]["default"] is False
    assert "explanation" in schema["PaperResult"]["properties"]
    assert "explanation" not in schema["PaperResult"].get("required", [])


def test_occlusion_over_any_runtime_and_the_422_when_it_is_off() -> None:
    rt = GatedRuntime()
    p = tiny_predictor(rt, name="encoder-x", version="3")
    # "... 2" scores label 2: the sentence ending in 2 carries the answer, the title none
    paper = {"title": "A title", "abstract": "First we look. Then we find 2"}
    on = create_app(ServeSettings(), lambda spec: p, predictor=p)
    with serve_app(on) as u:
        r = classify(u, {"papers": [paper], "explain": True})
    assert r.status_code == 200, r.text
    e = r.json()["results"][0]["explanation"]
    assert e["method"] == "occlusion" and e["label"] == rt.labels[2]
    assert [t["text"] for t in e["terms"]] == ["Then we find 2"]
    assert e["terms"][0]["field"] == "abstract" and e["terms"][0]["start"] == 15
    off = create_app(
        ServeSettings(explain=ExplainSettings(methods=("linear",))),
        lambda spec: p,
        predictor=p,
    )
    with serve_app(off) as u:
        refused = classify(u, {"papers": [paper], "explain": True})
        plain = classify(u, {"papers": [paper]})
    check_error(refused, 422, ["body", "explain"], "model 'encoder-x' v3 (family fake")
    assert "serve.explain.methods" in refused.json()["detail"][0]["msg"]
    assert plain.status_code == 200  # without explain the model serves as before
