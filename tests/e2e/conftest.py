"""One headless Chromium per test module, driven by Playwright, for the web page and docs tests.

Needs Debian's `chromium` (`make test` installs it; or set PAPEROPS_CHROMIUM to a Chromium or
Chrome binary); `playwright install` is never needed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("PAPEROPS_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 30_000


def _chromium() -> str:
    path = shutil.which(CHROMIUM) or CHROMIUM
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the browser tests drive a real headless "
            "Chromium. `make test` installs it (Debian package `chromium`); or run "
            "`apt-get install -y chromium`, or set PAPEROPS_CHROMIUM=/path/to/chromium.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # pragma: no cover - the dev extra has it
        pytest.fail(f"playwright is not installed ({e}): `make test` installs the dev extra")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield b
        b.close()
