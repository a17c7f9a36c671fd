"""The web page's Generate tab in a real headless Chromium against a real `paperops serve` (a
tfidf classifier + a tiny language model the test trains) on loopback.

What a user sees must be what the API answers: streamed text equal to the JSON answer for the
same seed, the footer's tokens and seed, 422s with field and rule, a Stop that ends the request,
and a page without a language model that says so. Needs Debian's `chromium` (see test_web.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TIMEOUT_MS
from tests.e2e.test_web import STATIC
from tests.integration.serve_helpers import serve_cli

pytestmark = pytest.mark.integration

TEXTS = [
    "Can I take ibuprofen with a cold? Yes, ibuprofen is fine for most adults.",
    "What are the symptoms of flu? Fever, cough and aches are common symptoms.",
    "Is it safe to take aspirin every day? Ask your doctor before taking aspirin daily.",
    "Title: Graph Neural Networks\nAbstract: We propose a model for graphs and prove bounds.",
    "Title: Dark Matter Halos\nAbstract: We observe a sample of galaxies with the telescope.",
] * 8
PROMPT = "Can I take"
# Chromium logs every non-2xx fetch as a console error; the tests provoke 422s on purpose.
EXPECTED_CONSOLE = "Failed to load resource: the server responded with a status of 422"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from paperops.models.lm import make_tiny_lm

    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("web_lm") / "lm"
    return make_tiny_lm(directory, TEXTS, context_length=128, train_steps=30)


@pytest.fixture(scope="module")
def server(
    tfidf_bundle: Path, tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`paperops serve` with the classifier and the language model."""
    base = tmp_path_factory.mktemp("web_gen_server")
    model = Path(shutil.copytree(tfidf_bundle, base / "model"))
    with serve_cli(base, "--model", str(model), "--generator", str(tiny_lm)) as url:
        yield url


@pytest.fixture(scope="module")
def server_without_lm(
    tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    base = tmp_path_factory.mktemp("web_nogen_server")
    model = Path(shutil.copytree(tfidf_bundle, base / "model"))
    with serve_cli(base, "--model", str(model), "serve.generator.enabled=false") as url:
        yield url


def open_page(browser: Any, url: str) -> Any:
    """A fresh page on `/`, Generate tab selected once the model details arrived; page errors
    and console errors are collected in `page.errors`."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.errors = []  # type: ignore[attr-defined]
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on(
        "console",
        lambda m: (
            pg.errors.append(m.text)
            if m.type == "error" and EXPECTED_CONSOLE not in m.text
            else None
        ),
    )
    pg.goto(url + "/")
    pg.wait_for_function(
        "!document.getElementById('gen-model-info').textContent.includes('Loading')"
    )
    pg.click("#tab-panel-generate")
    return pg


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    pg = open_page(browser, server)
    yield pg
    pg.context.close()


def api_generate(server: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(server + "/v1/generate", json=body, timeout=60)
    r.raise_for_status()
    return r.json()


def fill(
    page: Any, prompt: str, *, seed: int | str = "", max_new_tokens: int = 24, **more: Any
) -> None:
    page.fill("#gen-prompt", prompt)
    page.fill("#gen-seed", str(seed))
    page.fill("#gen-max-new-tokens", str(max_new_tokens))
    for name, value in more.items():
        page.fill(f"#gen-{name.replace('_', '-')}", str(value))


def generate_on_page(page: Any) -> dict[str, str]:
    """Click Generate, wait for the footer; what the page shows."""
    page.click("#generate")
    page.wait_for_selector("#gen-meta:not([hidden])")
    page.wait_for_function("!document.getElementById('generate').disabled")
    return {
        "text": page.eval_on_selector("#gen-text", "el => el.textContent"),
        "echo": page.eval_on_selector("#gen-echo", "el => el.textContent"),
        "finish": page.get_attribute("#gen-finish", "data-reason") or "",
        "generated": page.get_attribute("#gen-tokens", "data-generated") or "",
        "seed": page.inner_text("#gen-seed-used"),
        "meta": page.inner_text("#gen-meta"),
    }


def test_the_tab_shows_the_language_model_and_its_limits(page: Any, server: str) -> None:
    gen = httpx.get(server + "/v1/model", timeout=10).json()["generator"]
    assert page.is_visible("#tabs")
    assert page.get_attribute("#tab-panel-generate", "aria-selected") == "true"
    assert page.is_hidden("#panel-classify") and page.is_visible("#panel-generate")
    info = page.inner_text("#gen-model-info")
    assert gen["name"] in info and gen["runtime"] in info
    assert f"context {gen['context_length']:,} tokens" in info
    assert page.get_attribute("#gen-max-new-tokens", "max") == str(gen["max_new_tokens_cap"])
    assert page.input_value("#gen-max-new-tokens") == str(gen["default_max_new_tokens"])
    assert page.is_enabled("#generate") and page.is_disabled("#stop")
    assert page.is_hidden("#gen-unavailable")
    # every input has a label a screen reader announces
    for input_id in ("gen-prompt", "gen-max-new-tokens", "gen-temperature", "gen-top-p",
                     "gen-top-k", "gen-seed", "gen-example"):  # fmt: skip
        assert page.query_selector(f"label[for='{input_id}']") is not None
    prompts = json.loads((STATIC / "prompts.json").read_text(encoding="utf-8"))
    assert len(page.query_selector_all("#gen-example option")) == len(prompts) + 1
    page.select_option("#gen-example", "0")
    assert page.input_value("#gen-prompt") == prompts[0]["prompt"]
    assert page.errors == []


def test_streamed_text_is_the_api_answer_for_the_same_seed(
    page: Any, server: str, tmp_path: Path
) -> None:
    fill(page, PROMPT, seed=7, max_new_tokens=24)
    page.evaluate(
        """() => {  // count the updates of the text while it streams
            window.__updates = 0;
            new MutationObserver((records) => { window.__updates += records.length; })
              .observe(document.getElementById('gen-text'),
                       {characterData: true, childList: true, subtree: true});
        }"""
    )
    shown = generate_on_page(page)
    api = api_generate(server, prompt=PROMPT, seed=7, max_new_tokens=24)
    assert shown["text"] == api["text"]
    assert shown["echo"] == PROMPT
    assert shown["seed"] == "7"
    assert shown["finish"] == api["finish_reason"]
    assert shown["generated"] == str(api["tokens"]["generated"])
    assert f"{api['tokens']['generated']} generated" in shown["meta"]
    assert "tokens/s" in shown["meta"] and " ms" in shown["meta"]
    assert api["model"]["name"] in shown["meta"]
    if api["tokens"]["generated"] > 1 and len(api["text"]) > 1:
        assert page.evaluate("window.__updates") > 1  # it appeared piece by piece
    assert page.is_hidden("#gen-error")
    page.screenshot(path=str(tmp_path / "gen_tab.png"), full_page=True)
    page.set_viewport_size({"width": 380, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 380
    assert page.errors == []


def test_same_seed_twice_same_text_and_a_random_seed_can_be_reused(page: Any) -> None:
    fill(page, PROMPT, seed=11, max_new_tokens=16, temperature=1.5)
    first = generate_on_page(page)
    second = generate_on_page(page)
    assert first["text"] == second["text"] and first["seed"] == second["seed"] == "11"

    fill(page, PROMPT, seed="", max_new_tokens=16, temperature=1.5)
    random_run = generate_on_page(page)
    assert random_run["seed"].isdigit()  # the server picked one and the page shows it
    page.click("#gen-reuse-seed")
    assert page.input_value("#gen-seed") == random_run["seed"]
    assert generate_on_page(page)["text"] == random_run["text"]
    assert page.errors == []


def test_invalid_input_shows_the_field_and_rule(page: Any, server: str) -> None:
    fill(page, PROMPT, seed=1, temperature=0)  # below the input's min: the server decides
    page.click("#generate")
    page.wait_for_selector("#gen-error:not([hidden])")
    text = page.inner_text("#gen-error")
    assert "HTTP 422" in text and "temperature: " in text and "prompt:" not in text
    assert page.get_attribute("#gen-temperature", "aria-invalid") == "true"
    assert page.is_enabled("#generate") and page.is_disabled("#stop")

    cap = httpx.get(server + "/v1/model", timeout=10).json()["generator"]["max_new_tokens_cap"]
    fill(page, PROMPT, max_new_tokens=cap + 1, temperature=0.8, top_p=1.5)
    page.click("#generate")
    page.wait_for_function("document.getElementById('gen-error-list').innerText.includes('top_p')")
    text = page.inner_text("#gen-error-list")
    assert "max_new_tokens: " in text and "top_p: " in text and "temperature" not in text
    assert page.get_attribute("#gen-temperature", "aria-invalid") is None

    fill(page, "word " * 400, temperature=0.8, top_p=0.9)  # more tokens than the context
    page.click("#generate")
    page.wait_for_function(
        "document.getElementById('gen-error-list').innerText.includes('context_length')"
    )
    assert "prompt: " in page.inner_text("#gen-error-list")
    assert page.get_attribute("#gen-prompt", "aria-invalid") == "true"

    fill(page, "   ")
    page.click("#generate")
    page.wait_for_function(
        "document.getElementById('gen-error-list').innerText.startsWith('prompt')"
    )
    assert page.is_hidden("#gen-result")
    assert page.errors == []


def test_stop_ends_the_request_and_the_page_recovers(page: Any, server: str) -> None:
    # Stop at once: the request is aborted however fast the server is
    fill(page, PROMPT, seed=3, max_new_tokens=100)
    page.evaluate(
        "() => { document.getElementById('generate').click();"
        " document.getElementById('stop').click(); }"
    )
    page.wait_for_selector("#gen-meta:not([hidden])")
    assert page.get_attribute("#gen-finish", "data-reason") == "stopped"
    assert "stopped by you" in page.inner_text("#gen-finish")
    page.wait_for_function("!document.getElementById('generate').disabled")
    assert page.is_disabled("#stop") and page.is_hidden("#gen-error")

    # (Stopping mid-stream cannot be timed here: the tiny model writes 100 tokens in ~40 ms,
    # before the first piece is painted. That a disconnect stops decoding on the server is
    # tests/integration/test_generate_api.py's job.)

    # the server is fine afterwards and the page generates again
    full = api_generate(server, prompt=PROMPT, seed=3, max_new_tokens=100)
    again = generate_on_page(page)
    assert again["text"] == full["text"] and again["finish"] == full["finish_reason"]
    assert page.errors == []


def test_the_classify_tab_still_works(page: Any) -> None:
    page.click("#tab-panel-classify")
    assert page.is_visible("#panel-classify") and page.is_hidden("#panel-generate")
    page.select_option("#example", "0")
    page.click("#classify")
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#verdict-name")
    page.focus("#tab-panel-classify")  # the arrow keys move between tabs
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#panel-generate")
    assert page.evaluate("document.activeElement.id") == "tab-panel-generate"
    assert page.errors == []


def test_without_a_language_model_the_tab_says_so(browser: Any, server_without_lm: str) -> None:
    assert httpx.get(server_without_lm + "/v1/model", timeout=10).json()["generator"] is None
    pg = open_page(browser, server_without_lm)
    try:
        assert pg.is_visible("#gen-unavailable")
        assert "No language model is loaded" in pg.inner_text("#gen-unavailable")
        assert pg.is_disabled("#generate")
        pg.click("#tab-panel-classify")  # the classifier still serves
        pg.select_option("#example", "1")
        pg.click("#classify")
        pg.wait_for_selector("#result:not([hidden])")
        assert pg.errors == []
    finally:
        pg.context.close()
