"""The generated Prometheus rules: valid for promtool, unit-tested alert by alert, and built from the SLO spec."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from typing import Any

import pytest

from dashboards.config import CONFIG, FAST_TEST_CONFIG, BurnRate, docs_site_url
from dashboards.generate import render
from dashboards.rules import alert_names, rule_file, runbook_anchor
from tests.monitoring import DASHBOARDS, binary, load_yaml

RULES = DASHBOARDS / "prometheus" / "rules.yml"
FAST_RULES = DASHBOARDS / "prometheus" / "rules-fast-test.yml"
FIXTURES = sorted((DASHBOARDS / "tests").glob("*.yaml"))


def rules_of(path: Any) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def alerts_of(path: Any) -> list[dict[str, Any]]:
    return [rule for rule in rules_of(path) if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, check=False, cwd=DASHBOARDS)


def test_promtool_accepts_the_rule_files() -> None:
    result = promtool("check", "rules", str(RULES), str(FAST_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert FIXTURES
    result = promtool("test", "rules", *map(str, FIXTURES))
    assert result.returncode == 0, result.stdout + result.stderr


def fixture_cases() -> list[tuple[str, list[dict[str, Any]]]]:
    """(alertname, expected alerts) of every alert_rule_test in the promtool fixtures."""
    return [
        (case["alertname"], case.get("exp_alerts") or [])
        for path in FIXTURES
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_every_alert_has_a_firing_case_and_a_silent_case() -> None:
    cases = fixture_cases()
    for alert in alerts_of(RULES):
        name, labels = alert["alert"], alert["labels"]
        firing = [
            expected
            for alertname, alerts in cases
            if alertname == name
            for expected in alerts
            if labels.items() <= expected["exp_labels"].items()
        ]
        assert firing, f"no promtool case where {name} {labels} fires"
        # The firing case pins every annotation, so the rendered text is tested too.
        assert all(set(expected.get("exp_annotations", {})) == set(alert["annotations"]) for expected in firing)
        assert any(alertname == name and not alerts for alertname, alerts in cases), f"no silent case for {name}"


def test_alerts_follow_the_conventions() -> None:
    runbook = (DASHBOARDS.parent / "docs" / "runbooks.md").read_text()
    headings = {runbook_anchor(title) for title in re.findall(r"^## (\S+)$", runbook, re.MULTILINE)}
    alerts = alerts_of(RULES)
    assert {alert["alert"] for alert in alerts} == {
        "GatewayJobFailureBudgetBurn",
        "GatewayJobsStuck",
        "GatewayWebhookLatencyHigh",
        "GatewayWebhookAuthFailuresSpiking",
        "GatewayWebhookRejectionsSpiking",
        "GatewayDown",
        "GatewayAbsent",
        "GatewayNoWebhooks",
        "GatewayJwksNotFresh",
        "GatewayDeliveryBacklogGrowing",
        "GatewayDeliveryPendingTooLong",
        "GatewayDeliveryDeadLetters",
    }
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"Gateway(?:[A-Z][a-z0-9]+)+", name), name
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        annotations = alert["annotations"]
        assert annotations["summary"], name
        assert "{{" not in annotations["summary"], f"{name}: summary must be static"
        assert "{{ $labels." in annotations["description"], f"{name}: description must be templated"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == docs_site_url() + "runbooks/", name
        assert anchor in headings, f"{name}: no runbook section {anchor}"
        assert "for" in alert, name


def test_sli_is_recorded_over_every_window_and_burn_rates_follow_the_workbook() -> None:
    records = [rule["record"] for rule in rules_of(RULES) if "record" in rule]
    windows = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
    assert {f"job_kind:gateway_jobs_failed:ratio_rate{window}" for window in windows} <= set(records)
    pairs = {
        (alert["labels"]["long"], alert["labels"]["short"], alert["labels"]["severity"]): alert["expr"]
        for alert in alerts_of(RULES)
        if alert["alert"] == "GatewayJobFailureBudgetBurn"
    }
    assert set(pairs) == {
        ("1h", "5m", "critical"),
        ("6h", "30m", "critical"),
        ("1d", "2h", "warning"),
        ("3d", "6h", "warning"),
    }
    factors = {("1h", "5m"): "14.4", ("6h", "30m"): "6", ("1d", "2h"): "3", ("3d", "6h"): "1"}
    for (long, short, _), expr in pairs.items():
        threshold = f"({factors[long, short]} * 0.01)"
        assert f"ratio_rate{long} > {threshold}" in expr, expr
        assert f"ratio_rate{short} > {threshold}" in expr, expr


def test_the_objective_moves_rules_and_dashboards_together() -> None:
    stricter = replace(CONFIG, slo=replace(CONFIG.slo, objective=0.995))
    files = render(stricter)
    assert "(14.4 * 0.005)" in files["prometheus/rules.yml"]
    assert "(14.4 * 0.01)" not in files["prometheus/rules.yml"]
    assert "/ 0.005" in files["grafana/gateway-slo.json"]
    assert "99.5% SLO" in files["grafana/gateway-generation.json"]
    assert "the 0.5% failure budget of the 99.5% SLO" in files["prometheus/rules.yml"]


def test_fast_test_rules_are_the_same_alerts_on_second_windows() -> None:
    fast = alerts_of(FAST_RULES)
    real = [alert for alert in alerts_of(RULES) if alert["alert"] == "GatewayJobFailureBudgetBurn"]
    assert [alert["alert"] for alert in fast] == [alert["alert"] for alert in real]
    assert [alert["labels"]["severity"] for alert in fast] == [alert["labels"]["severity"] for alert in real]
    assert all(burn.long.endswith(("s", "m")) for burn in FAST_TEST_CONFIG.slo.burn_rates)
    fast_records = {rule["record"] for rule in rules_of(FAST_RULES) if "record" in rule}
    real_records = {rule["record"] for rule in rules_of(RULES) if "record" in rule}
    assert fast_records
    assert not fast_records & real_records


def test_a_record_clash_between_the_real_and_fast_rules_is_refused() -> None:
    clashing = replace(
        FAST_TEST_CONFIG, slo=replace(FAST_TEST_CONFIG.slo, burn_rates=(BurnRate("critical", "1h", "5m", 14.4, "0s"),))
    )
    with pytest.raises(ValueError, match="overwrite recorded series"):
        render(CONFIG, clashing)


def test_a_bad_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="objective"):
        replace(CONFIG.slo, objective=1.0)


def test_alert_names_lists_each_alert_once() -> None:
    names = alert_names(rule_file(CONFIG))
    assert names[0] == "GatewayJobFailureBudgetBurn"
    assert len(names) == len(set(names)) == 12
