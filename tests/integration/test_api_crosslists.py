"""`cross_lists=true` on /v1/classify through a real uvicorn on 127.0.0.1: a category bundle with
its head answers the head's suggestions beside the unchanged primary answer, old clients get the
old shape byte for byte, /v1/model says what the model can do, and a model without a head is a
422 naming it (never a 500)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from paperops.data.text import model_text
from paperops.inference.predictor import Predictor, load_predictor
from paperops.serve.app import create_app
from paperops.serve.settings import ExplainSettings, ServeSettings
from tests.conftest import CATEGORY_COUNTS, make_records
from tests.integration.serve_helpers import serve_app
from tests.integration.test_api import check_error

pytestmark = pytest.mark.integration

PAPERS = [
    {"title": r["title"], "abstract": r["abstract"], "id": f"p{i}"}
    for i, r in enumerate(make_records(CATEGORY_COUNTS, seed=23)[:8])
]


@pytest.fixture(scope="module")
def predictor(category_bundle: Path) -> Predictor:
    return load_predictor(category_bundle)


@pytest.fixture(scope="module")
def url(predictor: Predictor) -> Iterator[str]:
    app = create_app(ServeSettings(), lambda spec: predictor, predictor=predictor)
    with serve_app(app) as u:
        yield u


def classify(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + "/v1/classify", json=body, timeout=30)


def test_cross_lists_sit_beside_the_unchanged_answer(url: str, predictor: Predictor) -> None:
    plain = classify(url, {"papers": PAPERS})
    r = classify(url, {"papers": PAPERS, "cross_lists": True, "explain": True})
    assert plain.status_code == 200 and r.status_code == 200, r.text
    offline = predictor.predict_texts(
        [model_text(p["title"], p["abstract"]) for p in PAPERS], 3, cross_lists=True
    )
    suggested = 0
    for res, old, want in zip(r.json()["results"], plain.json()["results"], offline, strict=True):
        xl = res.pop("cross_lists")
        explanation = res.pop("explanation")
        assert res == old  # primary, top, set, archive: exactly as without the flag
        assert explanation["label"] == res["label"]  # both options at once
        assert want.cross_lists is not None
        assert xl == [
            {"label": c.label, "name": c.name, "probability": c.probability, "archive": c.archive}
            for c in want.cross_lists
        ]
        assert res["label"] not in [c["label"] for c in xl]
        suggested += len(xl)
    assert suggested > 0
    assert all("cross_lists" not in res for res in plain.json()["results"])


def test_model_says_what_it_can_answer(url: str, predictor: Predictor) -> None:
    body = httpx.get(url + "/v1/model", timeout=10).json()
    head = predictor.cross_lists
    assert head is not None
    assert body["model"]["cross_lists"] == {
        "labels": len(head.labels),
        "precision": head.config.precision,
        "max_labels": head.config.max_labels,
        "shared_features": True,
    }
    assert body["explain"] == {"available": True, "method": "linear", "max_papers": 8,
                               "reason": None}  # fmt: skip
    schema = httpx.get(url + "/openapi.json", timeout=10).json()["components"]["schemas"]
    assert schema["ClassifyRequest"]["properties"]["cross_lists"]["default"] is False
    assert "cross_lists" not in schema["PaperResult"].get("required", [])


def test_not_a_bool_is_422(url: str) -> None:
    r = classify(url, {"papers": PAPERS[:1], "cross_lists": "yes"})
    check_error(r, 422, ["body", "cross_lists"], "valid boolean")


def test_a_model_without_a_head_is_a_422_naming_it(tfidf_bundle: Path) -> None:
    p = load_predictor(tfidf_bundle, name="plain-tfidf", version="4")
    settings = ServeSettings(explain=ExplainSettings(enabled=False))
    app = create_app(settings, lambda spec: p, predictor=p)
    with serve_app(app) as u:
        refused = classify(u, {"papers": PAPERS[:2], "cross_lists": True})
        plain = classify(u, {"papers": PAPERS[:2]})
        model = httpx.get(u + "/v1/model", timeout=10).json()
    check_error(refused, 422, ["body", "cross_lists"], "model plain-tfidf v4 (tfidf) has no")
    assert refused.json()["detail"][0]["type"] == "cross_lists_unsupported"
    assert plain.status_code == 200
    assert model["model"]["cross_lists"] is None
    assert model["explain"]["available"] is False
    assert "serve.explain.enabled=false" in model["explain"]["reason"]
