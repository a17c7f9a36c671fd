"""Where the dev data lives. Missing data skips, unless CI sets PAPEROPS_REQUIRE_DATA=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PAPEROPS_SHARED", REPO.parent / "shared"))
ARXIV = SHARED / "data" / "arxiv" / "arxiv-metadata.jsonl.gz"
MQP = SHARED / "data" / "medical_questions_pairs" / "mqp.csv"


def require(path: Path) -> Path:
    if not path.is_file():
        msg = f"dev data not found at {path} (set PAPEROPS_SHARED)"
        if os.environ.get("PAPEROPS_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def arxiv_path() -> Path:
    return require(ARXIV)


@pytest.fixture(scope="session")
def mqp_path() -> Path:
    return require(MQP)
