"""The docs site: builds with `mkdocs build --strict` (mermaid vendored into it), generated
reference pages are fresh, and every page in docs/ is reachable from the nav."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.docs_site import build_site

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def load_gen_docs() -> Any:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def nav_pages(nav: Any) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(nav_pages(x) for x in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(nav_pages(v) for v in nav.values()))
    return set()


class _Loader(yaml.SafeLoader):
    """mkdocs.yml uses `!!python/name:` tags; only the nav matters here."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def test_generated_reference_pages_are_fresh() -> None:
    gen = load_gen_docs()
    for name, text in gen.generate().items():
        page = DOCS / "reference" / name
        assert page.exists(), f"{page} is missing: run `python scripts/gen_docs.py`"
        assert page.read_text(encoding="utf-8") == text, (
            f"docs/reference/{name} is stale: run `python scripts/gen_docs.py` and commit it"
        )
    assert gen.generate() == gen.generate(), "gen_docs.py output is not deterministic"


def test_every_page_is_in_the_nav() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    in_nav = nav_pages(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not pages - in_nav, f"pages missing from the nav in mkdocs.yml: {sorted(pages - in_nav)}"
    assert not in_nav - pages, f"nav entries without a page: {sorted(in_nav - pages)}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = build_site(tmp_path / "site")
    assert (site / "reference" / "python" / "index.html").exists()
    # mermaid is vendored into the site (tests/e2e/test_docs_offline.py shows it renders offline)
    assert (site / "assets" / "javascripts" / "mermaid.min.js").stat().st_size > 1_000_000
    assert "assets/javascripts/mermaid.min.js" in (site / "architecture" / "index.html").read_text(
        encoding="utf-8"
    )
    assert "mermaid.min.js" not in (site / "index.html").read_text(encoding="utf-8")
