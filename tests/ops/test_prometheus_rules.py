"""deploy/prometheus: the scrape config and alert rules pass promtool, and the rules' unit tests pass."""

from __future__ import annotations

import subprocess

import yaml

from tests.ops.conftest import DEPLOY, require_tool

PROMETHEUS = DEPLOY / "prometheus"


def promtool(*args: str) -> str:
    result = subprocess.run(
        [require_tool("promtool"), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_the_alert_rules_are_valid() -> None:
    assert "SUCCESS: 14 rules found" in promtool("check", "rules", "rules/paymaster.rules.yml")


def test_the_alert_rules_pass_their_unit_tests() -> None:
    """Thresholds at 50/80/100%, fast burn, sidecar down, store errors, dropped telemetry, and more."""
    assert "SUCCESS" in promtool("test", "rules", "tests/paymaster.rules.test.yml")


def test_every_alert_rule_has_a_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "paymaster.rules.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "tests" / "paymaster.rules.test.yml").read_text())
    tested = {
        case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]
    }
    assert names == tested


def test_every_alert_has_a_severity_and_a_summary() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "paymaster.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_scrape_config_is_valid() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
