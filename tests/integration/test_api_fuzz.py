"""Schemathesis fuzzes the live server's own OpenAPI schema: valid and invalid requests for every
operation (bounded examples); whatever it sends, the answer must never be a 5xx."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import not_a_server_error

from paperops.config import load_config
from paperops.serve.app import create_app
from paperops.serve.settings import ServeSettings
from tests.integration.gen_helpers import build_tiny_lm
from tests.integration.serve_helpers import serve_cli

# serial: inside a pytest-xdist worker schemathesis' parametrize runs no cases (measured: the
# server's counters stayed at 0), so `make test` runs this module in its own serial pass
pytestmark = [pytest.mark.integration, pytest.mark.serial]


@pytest.fixture(scope="module")
def live_server(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("fuzz")
    model = shutil.copytree(tfidf_bundle, base / "model")
    # an admin token is set, so /v1/admin/reload is live and fuzzed through its auth
    lm = build_tiny_lm(base / "lm")  # /v1/generate and /infer are fuzzed with a real LM
    with serve_cli(
        base,
        "--model",
        str(model),
        "--generator",
        str(lm),
        env={"PAPEROPS_ADMIN_TOKEN": "fuzz-token"},
    ) as url:
        yield url


def _schema() -> Any:
    """The OpenAPI document of an app built from the shipped config, as `paperops serve` builds
    it (no model is loaded for this). `test_the_fuzzed_schema_is_the_live_one` checks it equals
    the live server's /openapi.json. (Loaded at import: schemathesis 4.32's lazy
    `from_fixture` does not work with pytest 9.)"""
    app = create_app(ServeSettings.from_config(load_config([]).serve), lambda spec: None)  # type: ignore[arg-type,return-value]
    return app.openapi()


OPENAPI = _schema()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_the_fuzzed_schema_is_the_live_one(live_server: str) -> None:
    assert httpx.get(f"{live_server}/openapi.json", timeout=10).json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible
    suppress_health_check=list(HealthCheck),
)
def test_no_input_makes_a_server_error(case: Any, live_server: str) -> None:
    response = case.call(base_url=live_server, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])


def test_the_fuzzer_reached_every_operation_and_the_server_never_failed(live_server: str) -> None:
    """Runs after the fuzz cases (file order): the server's own counters show that many valid
    and invalid requests reached each operation and that none ended in a 5xx."""
    text = httpx.get(f"{live_server}/metrics", timeout=10).text
    by_route: dict[str, Counter[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "paperops_http_requests_total":
                by_route.setdefault(s.labels["route"], Counter())[s.labels["status"]] += int(
                    s.value
                )
    assert not [(r, st) for r, c in by_route.items() for st in c if st.startswith("5")], by_route
    for route in ("/v1/classify", "/predict", "/v1/feedback"):
        statuses = by_route.get(route, Counter())
        # valid cases answered (feedback for a random request id: 404 after validation)
        answered = statuses["404"] if route == "/v1/feedback" else statuses["200"]
        assert answered >= 1, (route, statuses)
        assert statuses["422"] >= 5, (route, statuses)  # invalid cases refused with the rule
    assert sum(by_route["/v1/admin/reload"].values()) >= 5
    assert sum(sum(c.values()) for c in by_route.values()) >= 200, by_route
