"""Build the docs site for a test, through the same path as `make docs`.

`mkdocs build` runs the hook in scripts/vendor_mermaid.py, which fetches the pinned mermaid
bundle with npm into .cache/mermaid/ when it is not cached yet. Where that cannot run (no npm, no
registry), the tests skip with the reason, or fail where PAPEROPS_REQUIRE_DATA=1 (CI), like the
dev-data and PostgreSQL tests. The build itself takes ~2 s here (2 cores, mermaid cached).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _unavailable(msg: str) -> None:
    if os.environ.get("PAPEROPS_REQUIRE_DATA") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def vendor_mermaid() -> ModuleType:
    """scripts/vendor_mermaid.py as a module (the mkdocs hook and `make docs` use the same file)."""
    spec = importlib.util.spec_from_file_location(
        "vendor_mermaid", ROOT / "scripts" / "vendor_mermaid.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_site(dest: Path) -> Path:
    """`mkdocs build --strict -d dest` with mermaid vendored, or skip/fail with the reason."""
    if importlib.util.find_spec("mkdocs") is None:
        _unavailable("mkdocs is not installed: pip install -e '.[dev]'")
    vm = vendor_mermaid()
    try:
        vm.vendor()
    except vm.VendorError as e:
        _unavailable(f"cannot vendor mermaid for the docs site: {e}")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(dest)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return dest
