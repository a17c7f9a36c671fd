"""The web page at `/` in a real headless Chromium against a real `paperops serve` on loopback.

Needs Debian's `chromium` (`make test` installs it; or set PAPEROPS_CHROMIUM to a Chromium or
Chrome binary). Playwright drives it; `playwright install` is never needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DEFAULT_COUNTS, make_records
from tests.e2e.conftest import TIMEOUT_MS
from tests.integration.serve_helpers import serve_copy

pytestmark = pytest.mark.integration

STATIC = Path(__file__).resolve().parents[2] / "src" / "paperops" / "serve" / "static"


@pytest.fixture(scope="module")
def server(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`paperops serve` (a child process on loopback) on a copy of the tfidf bundle; its request
    log and output stay in tmp."""
    with serve_copy(tfidf_bundle, tmp_path_factory.mktemp("web_server")) as url:
        yield url


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page on `/` with the model loaded; console errors are collected."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.errors = []  # type: ignore[attr-defined]
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(server + "/")
    pg.wait_for_function("!document.getElementById('model-info').textContent.includes('Loading')")
    yield pg
    context.close()


def classify_api(server: str, title: str, abstract: str) -> dict[str, Any]:
    body = {"papers": [{"title": title, "abstract": abstract}], "top_k": 5}
    r = httpx.post(server + "/v1/classify", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def examples() -> list[dict[str, str]]:
    return json.loads((STATIC / "examples.json").read_text(encoding="utf-8"))


def pct(p: float) -> str:
    v = p * 100
    return "<0.1%" if 0 < v < 0.1 else f"{v:.1f}%"


def submit(page: Any, title: str, abstract: str) -> None:
    page.fill("#title", title)
    page.fill("#abstract", abstract)
    page.click("#classify")


def check_result(page: Any, api: dict[str, Any]) -> None:
    """What the page shows is what the API answered for the same paper."""
    page.wait_for_selector("#result:not([hidden])")
    res = api["results"][0]
    assert page.inner_text("#verdict-name") == res["name"]
    rows = page.query_selector_all("#top-list .bar-row")
    assert [r.get_attribute("data-label") for r in rows] == [s["label"] for s in res["top"]]
    for row, s in zip(rows, res["top"], strict=True):
        assert row.query_selector(".bar-name").inner_text() == s["name"]
        assert row.query_selector(".bar-pct").inner_text() == pct(s["probability"])
        fill = row.query_selector(".bar-fill")
        assert float(fill.get_attribute("data-probability")) == pytest.approx(s["probability"])
        rendered = fill.evaluate(
            "el => el.getBoundingClientRect().width"
            " / el.parentElement.getBoundingClientRect().width"
        )
        track_px = row.query_selector(".bar-track").bounding_box()["width"]
        # the rendered share of the track is the probability (a 2 px minimum keeps 0 % visible)
        assert rendered == pytest.approx(s["probability"], abs=0.005 + 3 / track_px)
    chips = page.query_selector_all("#pset .chip")
    assert [c.get_attribute("data-label") for c in chips] == [
        s["label"] for s in res["prediction_set"]
    ]
    coverage = f"{round(api['coverage_target'] * 100)}%"
    assert f"({coverage} coverage)" in page.inner_text("#coverage-note")
    note = page.inner_text("#pset-note")
    if not res["prediction_set"]:
        assert f"No confident label at {coverage} coverage" in note
    model = api["model"]
    meta = page.inner_text("#result-meta")
    assert model["name"] in meta and model["runtime"] in meta and model["family"] in meta


def test_page_loads_with_the_model_and_limits(page: Any, server: str) -> None:
    info = httpx.get(server + "/v1/model", timeout=10).json()
    model = info.get("model", info)
    text = page.inner_text("#model-info")
    assert model["name"] in text and model["runtime"] in text
    limits = info["limits"]
    assert page.inner_text("#title-count") == f"0 / {limits['title_max_chars']:,}"
    assert page.inner_text("#abstract-count") == f"0 / {limits['abstract_max_chars']:,}"
    assert page.title().startswith("paperops")
    assert page.is_visible("#tabs")  # two tools: classify (selected first) and generate
    assert page.get_attribute("#tab-panel-classify", "aria-selected") == "true"
    assert page.errors == []


def test_picking_an_example_fills_both_fields(page: Any) -> None:
    exs = examples()
    assert len(exs) >= 6
    options = page.query_selector_all("#example option")
    assert len(options) == len(exs) + 1  # + the placeholder
    page.select_option("#example", "2")
    assert page.input_value("#title") == exs[2]["title"]
    assert page.input_value("#abstract") == exs[2]["abstract"]
    assert page.inner_text("#title-count").startswith(f"{len(exs[2]['title'])} /")


def test_classify_shows_what_the_api_answers(
    page: Any, server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ex = examples()[0]
    page.select_option("#example", "0")
    page.evaluate(
        """() => {  // record the button state at the moment the request leaves
            const original = window.fetch;
            window.__disabledAtFetch = [];
            window.fetch = (...args) => {
                window.__disabledAtFetch.push(document.getElementById('classify').disabled);
                return original(...args);
            };
        }"""
    )
    page.click("#classify")
    check_result(page, classify_api(server, ex["title"], ex["abstract"]))
    assert page.evaluate("window.__disabledAtFetch") == [True]
    assert page.is_enabled("#classify")
    assert page.is_hidden("#error")
    shot = tmp_path / "classify.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.set_viewport_size({"width": 380, "height": 800})
    page.screenshot(path=str(tmp_path / "classify_narrow.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 380  # nothing overflows sideways on a phone
    assert page.errors == []


def test_empty_prediction_set_is_explained(page: Any, server: str, tmp_path: Path) -> None:
    """Find (through the API) a paper the model has no confident label for, then show it."""
    for r in make_records(DEFAULT_COUNTS, seed=11)[:200]:
        api = classify_api(server, r["title"], r["abstract"])
        if not api["results"][0]["prediction_set"]:
            break
    else:
        pytest.fail("no paper with an empty prediction set among 200 candidates")
    submit(page, r["title"], r["abstract"])
    check_result(page, api)
    assert page.is_visible("#pset-note.empty-set")
    assert page.query_selector_all("#pset .chip") == []
    page.screenshot(path=str(tmp_path / "empty_set.png"), full_page=True)


def test_bad_input_shows_the_field_and_rule(page: Any, server: str) -> None:
    submit(page, "A perfectly good title", "   ")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "HTTP 422" in text and "abstract: " in text and "title:" not in text
    assert page.is_hidden("#result")

    limit = httpx.get(server + "/v1/model", timeout=10).json()["limits"]["title_max_chars"]
    submit(page, "T" * (limit + 1), "An abstract about graphs.")
    page.wait_for_function("document.getElementById('error-list').innerText.includes('title')")
    text = page.inner_text("#error-list")
    assert f"title: String should have at most {limit} characters" in text
    assert "over" in (page.get_attribute("#title-count", "class") or "")
    assert page.is_enabled("#classify")


def test_busy_server_and_network_errors_are_explained(page: Any) -> None:
    body = {"error": "inference queue full", "detail": [
        {"loc": [], "msg": "inference queue full: retry later", "type": "queue_full"}
    ]}  # fmt: skip
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(status=503, headers={"Retry-After": "2"}, json=body),
    )
    page.select_option("#example", "1")
    page.click("#classify")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "Service busy or not ready (HTTP 503)" in text
    assert "inference queue full: retry later" in text and "Retry after 2 s" in text

    page.unroute("**/v1/classify")
    page.route("**/v1/classify", lambda route: route.abort("connectionrefused"))
    page.click("#classify")
    page.wait_for_function(
        "document.getElementById('error-title').innerText.includes('Could not reach')"
    )
    assert "paperops serve" in page.inner_text("#error")
    assert page.is_enabled("#classify")


MARKS_JS = """id => Array.from(document.getElementById(id).childNodes).reduce((acc, n) => {
    const end = acc.pos + n.textContent.length;
    if (n.nodeName === 'MARK') acc.marks.push([acc.pos, end, Number(n.dataset.weight),
        Number(getComputedStyle(n).getPropertyValue('--w'))]);
    acc.pos = end;
    return acc;
}, {pos: 0, marks: []}).marks"""


def test_explain_highlights_exactly_what_the_api_names(
    page: Any, server: str, tmp_path: Path
) -> None:
    """The toggle asks for explain=true; every character the page marks is in a span of an
    explained term, every span is marked, and colour strength follows the weight."""
    r = make_records(DEFAULT_COUNTS, seed=23)[0]
    body = {"papers": [{"title": r["title"], "abstract": r["abstract"]}], "explain": True}
    api = httpx.post(server + "/v1/classify", json=body, timeout=30).json()
    e = api["results"][0]["explanation"]
    assert e["terms"], e
    page.check("#explain")
    submit(page, r["title"], r["abstract"])
    page.wait_for_selector("#why:not([hidden])")
    assert page.inner_text("#verdict-name") == api["results"][0]["name"]
    assert e["label"] in page.inner_text("#why-method")
    for field, text in (("title", r["title"]), ("abstract", r["abstract"])):
        want = [0.0] * len(text)  # per character: the largest weight of a term covering it
        for t in e["terms"]:
            for sp in t["spans"]:
                if sp["field"] == field:
                    for i in range(sp["start"], sp["end"]):
                        want[i] = max(want[i], t["weight"])
        got = [0.0] * len(text)
        marks = page.evaluate(MARKS_JS, f"why-{field}")
        for start, end, weight, _ in marks:
            got[start:end] = [weight] * (end - start)
        assert got == pytest.approx(want)
        assert page.inner_text(f"#why-{field}") == text  # the text itself is untouched
        by_weight = sorted(marks, key=lambda m: m[2])
        assert [m[3] for m in by_weight] == sorted(m[3] for m in marks)  # stronger = darker
    items = page.query_selector_all("#why-terms li")
    assert [float(i.get_attribute("data-weight")) for i in items] == [
        t["weight"] for t in e["terms"]
    ]
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)

    submit(page, "Zqxv Wvvq", "Plmk qqqq.")  # no known word: the reason, nothing marked
    page.wait_for_function("document.getElementById('why-note').innerText.includes('vocabulary')")
    assert page.query_selector_all("#why mark") == []
    page.uncheck("#explain")
    submit(page, r["title"], r["abstract"])
    page.wait_for_selector("#why", state="hidden")
    assert page.errors == []


def test_examples_are_valid_papers_from_several_fields() -> None:
    from paperops.serve.schemas import make_paper_model
    from paperops.serve.settings import Limits

    paper = make_paper_model(Limits())
    exs = examples()
    for ex in exs:
        paper.model_validate({"title": ex["title"], "abstract": ex["abstract"]})
        assert ex["field"] and ex["id"]
    assert len({ex["id"] for ex in exs}) == len(exs)
    assert len({ex["field"] for ex in exs}) >= 6
