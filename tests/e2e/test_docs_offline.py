"""The docs' mermaid diagrams render offline, in a real headless Chromium.

The site is built once (tests/docs_site.py: the same mkdocs hook as `make docs`, which vendors
mermaid from the npm registry into .cache/) and its architecture page is opened from disk
(file://) in a browser context that is offline and aborts every request that is not a file.
Every ```mermaid fence must become an SVG with the diagram's node text. The same page in a copy
of the site without the vendored script must NOT render (material's fallback to its CDN is
blocked), so the test fails if the diagrams ever depend on the network again.

Needs Debian's `chromium` (`make test` installs it; or set PAPEROPS_CHROMIUM), driven by Playwright
as in test_web.py.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docs_site import ROOT, build_site
from tests.e2e.conftest import TIMEOUT_MS

pytestmark = pytest.mark.integration

SCRIPT = "mermaid.min.js"
DIAGRAMS = len(re.findall(r"^```mermaid$", (ROOT / "docs" / "architecture.md").read_text(), re.M))
# one node label from each diagram of docs/architecture.md, in page order
NODE_TEXT = ["paperops data prepare", "Prometheus", "foundation: no side effects at import"]

# material renders each diagram into a *closed* shadow root; opening them lets the test read the
# SVG and changes nothing about how it is drawn
OPEN_SHADOW_ROOTS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
  return attach.call(this, {...init, mode: "open"});
};
"""
RENDERED = """
n => {
  const hosts = [...document.querySelectorAll("div.mermaid")];
  return hosts.length === n && hosts.every(h => h.shadowRoot && h.shadowRoot.querySelector("svg"));
}
"""
SVGS = """
() => [...document.querySelectorAll("div.mermaid")].map(h => {
  const svg = h.shadowRoot.querySelector("svg");
  const box = svg.getBoundingClientRect();
  return {text: svg.textContent, width: box.width, height: box.height};
})
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("docs") / "site")


@pytest.fixture(scope="module")
def site_without_mermaid(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built site less the vendored script: what the site was before vendoring."""
    dest = tmp_path_factory.mktemp("docs_bare") / "site"
    shutil.copytree(site, dest, ignore=lambda _d, names: [n for n in names if n == SCRIPT])
    return dest


@pytest.fixture
def offline(browser: Any) -> Iterator[tuple[Any, list[tuple[str, str]]]]:
    """A page with no network: the context is offline and every non-file request is aborted and
    recorded as (url, resource type), so nothing leaves the machine."""
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    blocked: list[tuple[str, str]] = []

    def route(r: Any) -> None:
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            blocked.append((r.request.url, r.request.resource_type))
            r.abort("internetdisconnected")

    context.route("**/*", route)
    context.add_init_script(OPEN_SHADOW_ROOTS)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page, blocked
    context.close()


def test_architecture_diagrams_render_from_disk_offline(
    site: Path, offline: tuple[Any, list[tuple[str, str]]]
) -> None:
    page, blocked = offline
    assert DIAGRAMS == len(NODE_TEXT) == 3
    page.goto((site / "architecture" / "index.html").as_uri())
    try:
        page.wait_for_function(RENDERED, arg=DIAGRAMS)
    except Exception as e:  # playwright's TimeoutError: say what the page asked the network for
        pytest.fail(f"the diagrams did not render offline ({e}); blocked requests: {blocked}")
    svgs = page.evaluate(SVGS)
    for svg, text in zip(svgs, NODE_TEXT, strict=True):
        assert text in svg["text"]
        assert svg["width"] > 200 and svg["height"] > 50, svg  # drawn, not an empty box
    assert not page.query_selector("pre.mermaid"), "a diagram was left as raw text"
    assert page.evaluate("typeof mermaid") == "object"
    # every script came from disk: mermaid was never asked of the network. What the page does
    # still ask for (blocked here) is cosmetic: material's Google web font stylesheet (system
    # fonts stand in) and the GitHub repository facts in the header.
    assert not [u for u, kind in blocked if "mermaid" in u or kind == "script"], blocked


def test_without_the_vendored_script_the_diagrams_stay_raw_text(
    site_without_mermaid: Path, offline: tuple[Any, list[tuple[str, str]]]
) -> None:
    page, blocked = offline
    url = (site_without_mermaid / "architecture" / "index.html").as_uri()
    # material falls back to its CDN; offline that request fails and nothing renders
    cdn = lambda r: r.url.startswith("http") and "mermaid" in r.url  # noqa: E731
    with page.expect_event("requestfailed", predicate=cdn):
        page.goto(url)
    assert [u for u, _ in blocked if "unpkg.com/mermaid" in u], blocked
    assert page.evaluate("typeof mermaid") == "undefined"
    assert page.evaluate("document.querySelectorAll('div.mermaid svg, .mermaid svg').length") == 0
    hosts = page.evaluate(
        "[...document.querySelectorAll('div.mermaid')].filter(h => h.shadowRoot).length"
    )
    assert hosts == 0
    # the fences are still <pre> blocks showing their source (material took their `mermaid`
    # class off while it waited for the script, and never got to put it back)
    raw = [t for t in page.locator("pre").all_inner_texts() if t.lstrip().startswith("flowchart")]
    assert len(raw) == DIAGRAMS and NODE_TEXT[0] in raw[0], raw
