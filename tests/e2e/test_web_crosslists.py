"""Cross-list suggestions ("Also list in") on the web page, in a real headless Chromium against a
real `paperops serve` on loopback: a category model with a cross-list head, and the plain tfidf
model without one (the page then sends exactly what it sent before).

Needs Debian's `chromium` (see tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CATEGORY_COUNTS, make_records
from tests.e2e.conftest import TIMEOUT_MS
from tests.e2e.test_web import pct, submit
from tests.integration.serve_helpers import serve_copy

pytestmark = pytest.mark.integration

Record = dict[str, Any]


@pytest.fixture(scope="module")
def xl_server(category_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`paperops serve` on a copy of the category bundle (it has a cross-list head)."""
    with serve_copy(category_bundle, tmp_path_factory.mktemp("web_xl_server")) as url:
        yield url


@pytest.fixture(scope="module")
def plain_server(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`paperops serve` on a copy of the archive tfidf bundle (no cross-list head)."""
    with serve_copy(tfidf_bundle, tmp_path_factory.mktemp("web_plain_server")) as url:
        yield url


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """`open_page(url, model_patch=None)`: a fresh page on `url + "/"` with the model loaded.
    Collects uncaught errors and console errors in `page.errors`, and the JSON bodies the page
    POSTs to v1/classify in `page.sent`. `model_patch(body)` edits v1/model's answer before the
    page sees it (to play a server that says something else)."""
    contexts: list[Any] = []

    def open_(url: str, model_patch: Callable[[dict[str, Any]], None] | None = None) -> Any:
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        contexts.append(context)
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.errors = []  # type: ignore[attr-defined]
        pg.sent = []  # type: ignore[attr-defined]
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)

        def on_request(req: Any) -> None:
            if req.method == "POST" and req.url.endswith("/v1/classify"):
                pg.sent.append(json.loads(req.post_data))

        pg.on("request", on_request)
        if model_patch is not None:

            def patched(route: Any) -> None:
                response = route.fetch()
                body = response.json()
                model_patch(body)
                route.fulfill(response=response, json=body)

            pg.route("**/v1/model", patched)
        pg.goto(url + "/")
        pg.wait_for_function(
            "!document.getElementById('model-info').textContent.includes('Loading')"
        )
        return pg

    yield open_
    for context in contexts:
        context.close()


def classify_api(server: str, paper: Record, **extra: Any) -> dict[str, Any]:
    body = {"papers": [{"title": paper["title"], "abstract": paper["abstract"]}], "top_k": 5}
    r = httpx.post(server + "/v1/classify", json=body | extra, timeout=30)
    r.raise_for_status()
    return r.json()


def find_paper(
    server: str, want: Callable[[dict[str, Any]], bool], seed: int
) -> tuple[Record, Any]:
    """The first cs.LG-primary record (by its categories) whose API answer satisfies `want`."""
    records = [
        r for r in make_records(CATEGORY_COUNTS, seed=seed) if r["categories"].startswith("cs.LG")
    ]
    for r in records:
        res = classify_api(server, r, cross_lists=True)["results"][0]
        if want(res):
            return r, res
    pytest.fail(f"no paper among {len(records)} cs.LG records matches")


def shown_chips(page: Any) -> list[tuple[str, str, str, str]]:
    return [
        (
            c.get_attribute("data-label"),
            c.query_selector(".chip-name").inner_text(),
            c.query_selector(".code").inner_text(),
            c.query_selector(".chip-pct").inner_text(),
        )
        for c in page.query_selector_all("#xl-chips .chip")
    ]


def test_model_shows_its_head(xl_server: str, plain_server: str) -> None:
    """What the page relies on: the head in v1/model, and cross_lists only when asked for."""
    head = httpx.get(xl_server + "/v1/model", timeout=10).json()["model"]["cross_lists"]
    assert head and head["labels"] >= 1
    assert httpx.get(plain_server + "/v1/model", timeout=10).json()["model"]["cross_lists"] is None
    paper = make_records(CATEGORY_COUNTS, seed=5)[0]
    assert "cross_lists" not in classify_api(xl_server, paper)["results"][0]


def test_chips_are_what_the_api_suggests(open_page: Any, xl_server: str, tmp_path: Path) -> None:
    """A cs.LG paper: the page asks for cross_lists and shows the head's suggestions, in the
    API's order, with names, codes and the same percentages."""
    paper, res = find_paper(
        xl_server, lambda res: res["label"] == "cs.LG" and bool(res["cross_lists"]), seed=7
    )
    page = open_page(xl_server)
    submit(page, paper["title"], paper["abstract"])
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_visible("#xl")
    assert page.inner_text("#verdict-code") == "cs.LG"
    assert shown_chips(page) == [
        (s["label"], s["name"], s["label"], pct(s["probability"])) for s in res["cross_lists"]
    ]
    assert "stat.ML" in [s["label"] for s in res["cross_lists"]]
    assert "do not sum to 1" in page.inner_text("#xl-note")
    assert page.inner_text("#xl h4") == "Also list in"
    assert page.sent == [
        {
            "papers": [{"title": paper["title"], "abstract": paper["abstract"]}],
            "top_k": 5,
            "cross_lists": True,
        }
    ]
    page.screenshot(path=str(tmp_path / "crosslists.png"), full_page=True)
    page.set_viewport_size({"width": 380, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 380
    assert page.errors == []


def test_no_suggestion_is_said(open_page: Any, xl_server: str) -> None:
    """An empty list: the section is shown with its reason and no chips."""
    records = make_records(CATEGORY_COUNTS, seed=9)
    for paper in records:
        res = classify_api(xl_server, paper, cross_lists=True)["results"][0]
        if res["cross_lists"] == []:
            break
    else:
        pytest.fail(f"no paper with an empty cross-list among {len(records)}")
    page = open_page(xl_server)
    submit(page, paper["title"], paper["abstract"])
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_visible("#xl")
    assert shown_chips(page) == []
    assert "No other category passed its threshold" in page.inner_text("#xl-note")
    assert page.errors == []


def test_model_without_a_head_hides_the_section(open_page: Any, plain_server: str) -> None:
    paper = make_records(CATEGORY_COUNTS, seed=7)[0]
    page = open_page(plain_server)
    submit(page, paper["title"], paper["abstract"])
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_hidden("#xl")
    assert page.query_selector_all("#xl-chips .chip") == []
    assert len(page.sent) == 1 and "cross_lists" not in page.sent[0]
    assert page.sent[0] == {
        "papers": [{"title": paper["title"], "abstract": paper["abstract"]}],
        "top_k": 5,
    }
    assert page.is_enabled("#explain")  # the tfidf model explains (linear)
    assert page.errors == []


def test_older_server_without_head_or_explain_keys(open_page: Any, xl_server: str) -> None:
    """v1/model without `cross_lists` and `explain` (an older server): nothing asked for,
    nothing shown, the explain toggle left usable."""

    def older(body: dict[str, Any]) -> None:
        body.pop("explain")
        body["model"].pop("cross_lists")

    paper = make_records(CATEGORY_COUNTS, seed=7)[0]
    page = open_page(xl_server, older)
    assert page.is_enabled("#explain")
    submit(page, paper["title"], paper["abstract"])
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_hidden("#xl")
    assert "cross_lists" not in page.sent[0]
    assert page.errors == []


def test_unavailable_explain_disables_the_toggle(open_page: Any, xl_server: str) -> None:
    reason = "explanations are turned off (serve.explain.enabled=false)"

    def off(body: dict[str, Any]) -> None:
        body["explain"] = {"available": False, "method": None, "max_papers": 8, "reason": reason}

    page = open_page(xl_server, off)
    assert page.is_disabled("#explain")
    assert not page.is_checked("#explain")
    assert page.get_attribute("label[for=explain]", "title") == reason
    assert reason in page.text_content("#explain-hint")
    paper = make_records(CATEGORY_COUNTS, seed=7)[0]
    submit(page, paper["title"], paper["abstract"])
    page.wait_for_selector("#result:not([hidden])")
    assert "explain" not in page.sent[0] and page.sent[0]["cross_lists"] is True
    assert page.errors == []
