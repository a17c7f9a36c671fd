"""deploy/grafana is provisioning Grafana really loads: a datasource with a fixed uid, a dashboard
provider (without one a dashboard JSON is never loaded), and one dashboard whose every query uses
only metrics the API exports, so a renamed metric cannot leave a panel silently empty.

Fast: no servers. tests/integration/test_prometheus_live.py runs every query of the dashboard
against a real Prometheus scraping a real API (the PromQL itself is validated there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from paperops.serve.metrics import ServeMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "paperops.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "paperops.yml"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"
PROVISIONING_MOUNT = "/etc/grafana/provisioning"
DS_UID = "prometheus"
NOT_FROM_THE_API = {"up"}  # Prometheus' own scrape-health series
# panel types built into Grafana 10/11: no plugin to install for the dashboard to render
BUILTIN_PANELS = {"row", "timeseries", "stat", "table", "heatmap", "bargauge", "piechart", "gauge"}

# Grafana's variables, each replaced by a literal PromQL accepts where the variable stands
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval_ms": "15000",
    "$__interval": "15s",
    "$__range_ms": "3600000",
    "$__range_s": "3600",
    "$__range": "1h",
}
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "max_over_time",
    "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh",
    "time", "timestamp", "vector", "year",
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
}  # fmt: skip
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}  # fmt: skip


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed children included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def substitute_grafana_vars(expr: str) -> str:
    """The PromQL Grafana sends: its $__ variables replaced (longest names first)."""
    for name in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARS[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers `{...}`, ranges `[...]` and grouping label lists (`by (...)`, `on
    (...)`) go first; what remains is functions (an identifier before `(`), keywords, numbers and
    metric names. An unknown function is an error rather than a guess.
    """
    expr = substitute_grafana_vars(expr)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}: add it to GRAFANA_VARS")
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = match.group(), expr[match.end() :].lstrip()
        if rest.startswith("("):
            if word not in PROMQL_FUNCTIONS:
                raise ValueError(f"unknown PromQL function {word!r} in {expr!r}")
            continue
        if word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def exported_metrics() -> set[str]:
    """Every series name the API can export: the samples of a real ServeMetrics (process metrics
    and drift gauges included, from a small drift report), plus the suffixed names of labelled
    metrics that have no samples before their first observation."""
    metrics = ServeMetrics()
    metrics.set_drift(
        {
            "ts": 1_700_000_000.0,
            "window": {"papers": 10},
            "checks": {"length": {"score": 0.1, "threshold": 0.2, "drifted": False}},
        }
    )
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",), "gauge": ("",)}  # fmt: skip
    names = set()
    for family in metrics.registry.collect():
        names |= {sample.name for sample in family.samples}
        names |= {family.name + sfx for sfx in suffixes.get(family.type, ())}
    return names


def unknown_metrics(exprs: list[tuple[str, str]], exported: set[str]) -> list[str]:
    """'panel: metric' for every metric a query uses that the API does not export."""
    return [
        f"{title}: {name}"
        for title, expr in exprs
        for name in sorted(metric_names(expr) - exported - NOT_FROM_THE_API)
    ]


# --- the parser and the checker ---------------------------------------------------------------


def test_metric_names_parses_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!~"/x|/y", le="1.0"}'
        "[$__rate_interval]))) > on (check) group_left (route) b offset 5m"
        " or vector(0) and time() - max(c_seconds > 0) + count without (job) (d:rec:rate5m[5m:1m])"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c_seconds", "d:rec:rate5m"}
    assert metric_names("sum(rate(x_total[1m])) / 1e3 + NaN") == {"x_total"}
    with pytest.raises(ValueError, match="unknown PromQL function 'ratee'"):
        metric_names("ratee(x_total[1m])")
    with pytest.raises(ValueError, match="unknown Grafana variable"):
        metric_names("rate(x_total[$interval])")


def test_a_renamed_metric_is_reported() -> None:
    exported = exported_metrics()
    good = 'sum by (route) (rate(paperops_http_requests_total{status=~"5.."}[$__rate_interval]))'
    assert unknown_metrics([("Errors", good)], exported) == []
    renamed = good.replace("paperops_http_requests_total", "paperops_http_request_total")
    assert unknown_metrics([("Errors", renamed)], exported) == [
        "Errors: paperops_http_request_total"
    ]


def test_exported_metrics_include_drift_and_process() -> None:
    exported = exported_metrics()
    assert {
        "paperops_drift_score",
        "paperops_drift_threshold",
        "paperops_drift_detected",
        "paperops_drift_window_papers",
        "paperops_drift_report_timestamp_seconds",
        "paperops_http_requests_total",
        "paperops_http_request_duration_seconds_bucket",
        "paperops_model_info",
        "process_resident_memory_bytes",
    } <= exported


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_loads_with_its_settings() -> None:
    d = load_dashboard()
    assert d["uid"] == "paperops" and d["title"]
    assert d.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert 36 <= d["schemaVersion"] <= 41
    assert d["time"] == {"from": "now-1h", "to": "now"} and d["refresh"] == "30s"


def test_every_panel_is_complete_and_unique() -> None:
    all_panels = list(panels(load_dashboard()))
    ids = [p.get("id") for p in all_panels]
    assert all(isinstance(i, int) for i in ids), "every panel needs an integer id"
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels:
        assert p.get("title"), f"panel {p['id']} has no title"
        assert p.get("type") in BUILTIN_PANELS, f"{p['title']}: panel type {p.get('type')!r}"
        assert p.get("datasource") == {"type": "prometheus", "uid": DS_UID}, p["title"]
        pos = p.get("gridPos", {})
        assert set(pos) == {"h", "w", "x", "y"}, f"{p['title']}: gridPos {pos}"
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        targets = p.get("targets", [])
        assert targets, f"{p['title']} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{p['title']}: duplicate refIds"
        for t in targets:
            assert t.get("datasource", {}).get("uid") == DS_UID, p["title"]
            assert t.get("expr", "").strip(), f"{p['title']} {t['refId']}: empty expr"


def test_every_query_uses_a_metric_the_api_exports() -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert not unknown_metrics(exprs, exported_metrics())
    used = set().union(*(metric_names(e) for _, e in exprs))
    # the list: traffic, latency, errors, batching, class mix, confidence, drift, model
    for name in (
        "paperops_http_requests_total",
        "paperops_http_request_duration_seconds_bucket",
        "paperops_http_requests_in_flight",
        "paperops_inference_duration_seconds_bucket",
        "paperops_batch_size_bucket",
        "paperops_generation_batch_size_bucket",
        "paperops_queue_depth",
        "paperops_predictions_total",
        "paperops_prediction_confidence_bucket",
        "paperops_prediction_set_size_sum",
        "paperops_input_length_chars_bucket",
        "paperops_drift_score",
        "paperops_drift_threshold",
        "paperops_drift_detected",
        "paperops_drift_window_papers",
        "paperops_drift_report_timestamp_seconds",
        "paperops_model_info",
        "paperops_generator_info",
        "paperops_generation_tokens_total",
        "paperops_generation_time_to_first_token_seconds_bucket",
        "paperops_ready",
        "paperops_request_log_written_total",
        "paperops_request_log_dropped_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert name in used, f"no panel shows {name}"


# --- provisioning -----------------------------------------------------------------------------


def test_datasource_is_provisioned_with_the_uid_the_panels_use() -> None:
    config = yaml.safe_load(DATASOURCES.read_text())
    assert config["apiVersion"] == 1
    (ds,) = config["datasources"]
    assert ds["name"] == "Prometheus" and ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090" and ds["isDefault"] is True
    used = {p["datasource"]["uid"] for p in panels(load_dashboard())}
    assert used == {ds["uid"]}, f"panels use {used}, {DATASOURCES.name} provisions {ds['uid']!r}"


def test_dashboard_provider_points_at_the_dashboards() -> None:
    config = yaml.safe_load(PROVIDER.read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file" and provider["name"]
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    assert provider.get("folder") or provider["options"].get("foldersFromFilesStructure")
    assert sorted(p.name for p in DASHBOARD.parent.glob("*.json")) == ["paperops.json"]


def test_compose_mounts_what_the_provider_reads() -> None:
    if not COMPOSE.is_file():
        pytest.skip(f"{COMPOSE} does not exist yet: nothing mounts the provisioning to check")
    compose = yaml.safe_load(COMPOSE.read_text())
    grafana = compose["services"].get("grafana")
    assert grafana, "deploy/compose.yaml has no `grafana` service"
    mounts: dict[str, str] = {}
    for volume in grafana.get("volumes", []):
        if isinstance(volume, dict):  # the long syntax
            source, target = volume.get("source", ""), volume.get("target", "")
        else:
            source, target = str(volume).split(":")[:2]
        mounts[target] = (
            str((COMPOSE.parent / source).resolve()) if source.startswith(".") else source
        )
    provider_path = yaml.safe_load(PROVIDER.read_text())["providers"][0]["options"]["path"]
    assert mounts.get(provider_path) == str(DASHBOARD.parent), (
        f"compose must mount ./grafana/dashboards at {provider_path}: {mounts}"
    )
    assert mounts.get(PROVISIONING_MOUNT) == str(GRAFANA / "provisioning"), (
        f"compose must mount ./grafana/provisioning at {PROVISIONING_MOUNT}: {mounts}"
    )
