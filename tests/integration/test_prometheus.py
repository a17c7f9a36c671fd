"""deploy/prometheus is checked by the real promtool: config, rules, and rule unit tests; and
every metric the rules use is one the API exports (a renamed metric must not silence an alert)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from paperops.serve.metrics import ServeMetrics

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
NOT_FROM_THE_API = {"up", "paperops_drift_score", "paperops_drift_threshold"}


def _promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: `make sysdeps` installs the Debian package prometheus")
    proc = subprocess.run(
        [tool, *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_config_is_valid() -> None:
    out = _promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in out


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 8 rules found" in _promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    tested = {t["alertname"] for test in tests for t in test["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == tested, f"alerts never seen firing in alerts_test.yml: {alerts - tested}"


def test_rules_only_use_metrics_the_api_exports() -> None:
    # labelled metrics have no samples before their first observation: names come from types
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",), "gauge": ("",)}  # fmt: skip
    exported = set()
    for family in ServeMetrics(process=False).registry.collect():
        exported |= {family.name + sfx for sfx in suffixes.get(family.type, ("",))}
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    used = set(re.findall(r"\b(paperops_[a-z_]+|up)\b", exprs))
    missing = sorted(used - exported - NOT_FROM_THE_API)
    assert not missing, f"alerts.yml uses metrics the API does not export: {missing}"
