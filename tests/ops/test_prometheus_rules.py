"""deploy/prometheus: the scrape config and alert rules pass promtool, and the rules' unit tests pass."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.ops.conftest import DEPLOY, require_tool
from tests.ops.secure import lay_out, make_secrets, rooted

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


def test_the_scrape_config_is_valid(tmp_path: Path) -> None:
    """promtool also checks that the token and CA files exist: they are where compose mounts them,
    made by deploy/compose/make-secrets.sh."""
    root = lay_out(make_secrets(tmp_path / "secrets"), tmp_path / "root")
    checked = tmp_path / "prometheus.yml"
    checked.write_text(rooted((PROMETHEUS / "prometheus.yml").read_text(), root))
    (tmp_path / "rules").symlink_to(PROMETHEUS / "rules")
    assert "SUCCESS" in promtool("check", "config", str(checked))


def test_the_kubernetes_scrape_job_is_valid(tmp_path: Path) -> None:
    """The job for a cluster's Prometheus, with its two files (a reader token and the CA) in place."""
    text = (PROMETHEUS / "scrape-kubernetes.yml").read_text()
    job = yaml.safe_load(text)["scrape_configs"][0]
    assert job["job_name"] == "paymaster-sidecar" and job["scheme"] == "https"
    (names,) = [sd["names"] for sd in job["dns_sd_configs"]]
    manifests = yaml.safe_load_all((DEPLOY / "k8s" / "service.yaml").read_text())
    headless = {m["metadata"]["name"] for m in manifests if m["spec"].get("clusterIP") == "None"}
    assert [name.split(".")[0] for name in names] == sorted(headless)
    for path in (job["authorization"]["credentials_file"], job["tls_config"]["ca_file"]):
        placed = tmp_path / path.lstrip("/")
        placed.parent.mkdir(parents=True, exist_ok=True)
        placed.write_text("placeholder")
    checked = tmp_path / "scrape.yml"
    checked.write_text(rooted(text, tmp_path))
    assert "SUCCESS" in promtool("check", "config", str(checked))
