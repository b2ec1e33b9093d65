"""deploy/prometheus: promtool checks the rules and the local stack's config, and runs the rules'
unit tests, which fire every alert from synthetic series and show it quiet on healthy ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests import DEPLOY
from tests.tools import require_tool

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules.yaml"
RULE_TESTS = PROMETHEUS / "rules.test.yaml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool", "prometheus")
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False, timeout=120)


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_pass_promtool_check() -> None:
    completed = _promtool("check", "rules", str(RULES))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in completed.stdout


def test_the_rules_unit_tests_pass() -> None:
    completed = _promtool("test", "rules", str(RULE_TESTS))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS" in completed.stdout


def test_the_alerts_cover_what_a_platform_team_watches() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}

    assert alerts == {
        "TrsWorkerDown",
        "TrsWorkersAbsent",
        "TrsWorkerPodsNotReady",
        "TrsWorkerLagGrowing",
        "TrsWorkerDeadLetters",
        "TrsWorkerProduceErrors",
        "TrsWorkerTaskFailures",
        "TrsWorkerBackpressure",
    }
    failures = next(rule for rule in _rules() if rule.get("alert") == "TrsWorkerTaskFailures")
    for outcome in ("retries_exhausted", "timeout", "circuit_open"):
        assert outcome in failures["expr"]


def test_every_alert_is_tested_firing_and_quiet_and_every_record_is_tested() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    expressions = " ".join(case["expr"] for test in tests for case in test.get("promql_expr_test", []))

    for rule in _rules():
        if "alert" in rule:
            outcomes = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == rule["alert"]]
            assert True in outcomes, f"{rule['alert']} is never shown firing"
            assert False in outcomes, f"{rule['alert']} is never shown quiet"
        else:
            assert rule["record"] in expressions, f"{rule['record']} is never tested"


def test_the_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 0.2", "> 0.3"))

    completed = _promtool("test", "rules", str(tmp_path / RULE_TESTS.name))

    assert completed.returncode != 0
    assert "alertname: TrsWorkerTaskFailures" in completed.stdout + completed.stderr


def test_the_local_stack_s_prometheus_config_passes_promtool() -> None:
    completed = _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
    # The alerting rules and the dashboard select on this job.
    assert [job["job_name"] for job in config["scrape_configs"]] == ["trs-worker"]
