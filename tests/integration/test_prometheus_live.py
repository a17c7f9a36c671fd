"""The real `prometheus` binary scrapes a real `paperops serve` (both on 127.0.0.1), with the
repository's alert rules loaded: the series the dashboards and alerts read exist, a p99 query
returns a number, the rules evaluate, and every query of the Grafana dashboard is valid PromQL
that Prometheus answers with `success`.

Scrapes every second: a rate over [1m] needs two scrapes that saw the counter grow, so traffic is
sent after Prometheus' first scrape and spread over a few seconds.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from paperops.serve.launcher import free_port, running_process
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.serve_helpers import serve_cli
from tests.integration.test_grafana import dashboard_exprs, load_dashboard, substitute_grafana_vars

pytestmark = pytest.mark.integration

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
JOB = "paperops-api"  # the job name of deploy/prometheus/prometheus.yml (the alerts select it)
PAPERS = [
    {"title": r["title"], "abstract": r["abstract"]} for r in make_records(DEFAULT_COUNTS, seed=11)
]
N_CLASSIFY, N_INVALID, TRAFFIC_DEADLINE_S, POLL_DEADLINE_S = 40, 4, 30.0, 60.0
P99 = (
    "histogram_quantile(0.99, sum by (le) "
    '(rate(paperops_http_request_duration_seconds_bucket{route="/v1/classify"}[1m])))'
)


@dataclass
class Stack:
    api: httpx.Client
    prom: httpx.Client
    base: Path

    def query(self, expr: str) -> dict[str, Any]:
        """/api/v1/query's whole answer (status, data or errorType/error)."""
        r = self.prom.get("/api/v1/query", params={"query": expr})
        body: dict[str, Any] = r.json()
        return body

    def vector(self, expr: str) -> list[dict[str, Any]]:
        body = self.query(expr)
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def poll(what: str, check: Callable[[], Any], deadline_s: float = POLL_DEADLINE_S) -> Any:
    """`check()`'s first truthy answer, asked every 0.5 s up to `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            answer = check()
            if answer:
                return answer
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus never showed {what} within {deadline_s:.0f} s")
        time.sleep(0.5)


def prometheus_config(api_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the API on loopback and a 1 s scrape interval."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}],
            }
        ],
    }


def drive_traffic(api: httpx.Client) -> None:
    """N_CLASSIFY valid and N_INVALID invalid classify requests in rounds a few scrapes apart;
    bounded by count and by TRAFFIC_DEADLINE_S."""
    deadline = time.monotonic() + TRAFFIC_DEADLINE_S
    sent = invalid = 0
    while (sent < N_CLASSIFY or invalid < N_INVALID) and time.monotonic() < deadline:
        for _ in range(min(8, N_CLASSIFY - sent)):
            paper = PAPERS[sent % len(PAPERS)]
            r = api.post("/v1/classify", json={"papers": [paper], "top_k": 2})
            assert r.status_code == 200, r.text
            sent += 1
        if invalid < N_INVALID:
            r = api.post("/v1/classify", json={"papers": []})
            assert r.status_code == 422, r.text
            invalid += 1
        time.sleep(0.6)
    assert sent == N_CLASSIFY and invalid == N_INVALID, "traffic did not finish in time"


@pytest.fixture(scope="module")
def stack(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is missing: `make sysdeps` installs the Debian package")
    base = tmp_path_factory.mktemp("prometheus_live")
    model = Path(shutil.copytree(tfidf_bundle, base / "model"))
    with contextlib.ExitStack() as stack:
        api_url = stack.enter_context(serve_cli(base / "api", "--model", str(model)))
        api = stack.enter_context(httpx.Client(base_url=api_url, timeout=30))
        # the classify series exist before the first scrape: every later rise is a rate
        assert api.post("/v1/classify", json={"papers": PAPERS[:1]}).status_code == 200
        config = base / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(int(api_url.rsplit(":", 1)[1]))))
        port = free_port()
        cmd = [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={base / 'tsdb'}",
            "--log.level=warn",
        ]
        # running_process stops it in a finally: SIGTERM, wait up to 10 s, then kill
        prom_url = stack.enter_context(
            running_process(
                cmd,
                f"http://127.0.0.1:{port}",
                ready_path="/-/ready",
                log_path=base / "prometheus.log",
                ready_timeout=30,
                stop_timeout=10,
            )
        )
        handle = Stack(api, stack.enter_context(httpx.Client(base_url=prom_url, timeout=10)), base)
        poll("the API scraped", lambda: handle.vector(f'up{{job="{JOB}"}} == 1'))
        drive_traffic(api)
        poll(
            "paperops_http_requests_total for /v1/classify",
            lambda: handle.vector('paperops_http_requests_total{route="/v1/classify"}'),
        )
        yield handle


def test_the_api_is_scraped_and_its_main_series_exist(stack: Stack) -> None:
    (up,) = stack.vector(f'up{{job="{JOB}"}}')
    assert up["value"][1] == "1"
    statuses = {
        s["metric"]["status"]
        for s in stack.vector('paperops_http_requests_total{route="/v1/classify"}')
    }
    assert {"200", "422"} <= statuses
    for name in (
        "paperops_http_request_duration_seconds_bucket",
        "paperops_http_requests_in_flight",
        "paperops_inference_duration_seconds_bucket",
        "paperops_batch_size_bucket",
        "paperops_predictions_total",
        "paperops_prediction_confidence_bucket",
        "paperops_prediction_set_size_bucket",
        "paperops_input_length_chars_bucket",
        "paperops_model_info",
        "paperops_ready",
        "paperops_request_log_written_total",
        "paperops_drift_report_timestamp_seconds",
        "process_resident_memory_bytes",
    ):
        assert stack.vector(name), f"no series {name} in Prometheus"
    (ready,) = stack.vector("paperops_ready")
    assert ready["value"][1] == "1"


def test_p99_latency_is_a_number(stack: Stack) -> None:
    def finite() -> float | None:
        result = stack.vector(P99)
        value = float(result[0]["value"][1]) if result else math.nan
        return value if math.isfinite(value) else None

    assert poll("a finite p99 of /v1/classify", finite) > 0


def test_the_alert_rules_load_and_evaluate(stack: Stack) -> None:
    expected = yaml.safe_load(ALERTS.read_text())
    names = {g["name"]: len(g["rules"]) for g in expected["groups"]}

    def evaluated() -> list[dict[str, Any]] | None:
        groups = stack.prom.get("/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return groups if rules and all(r["health"] == "ok" for r in rules) else None

    groups = poll("every alert rule evaluated with health ok", evaluated)
    assert {g["name"]: len(g["rules"]) for g in groups} == names


def test_every_dashboard_query_is_valid_promql(stack: Stack) -> None:
    failures = []
    answered = {}
    for title, expr in dashboard_exprs(load_dashboard()):
        body = stack.query(substitute_grafana_vars(expr))
        if body.get("status") != "success":
            failures.append(f"{title}: {expr}: {body.get('errorType')}: {body.get('error')}")
        else:
            answered[title] = answered.get(title, False) or bool(body["data"]["result"])
    assert not failures, "\n".join(failures)
    # the panels classify traffic feeds show data (empty answers are fine elsewhere: no drift
    # report, no generator in this server)
    for title in (
        "Ready",
        "Requests/s by route and status",
        "Latency percentiles (all routes but probes)",
        "Predicted class mix",
        "Model being served",
        "Memory",
    ):
        assert answered[title], f"the panel {title!r} has no data"
