"""The generated dashboards: current, deterministic, following the conventions, on the gateway's real metrics."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from dashboards.config import CONFIG
from dashboards.generate import main, render
from gateway.kinds import KINDS
from gateway.telemetry.metrics import Metrics, ModelLabels
from tests.monitoring import DASHBOARDS, ROOT, committed_dashboards, load_yaml, panels

GENERATED_DIRS = ("grafana", "prometheus", "provisioning")
HAND_WRITTEN = {"prometheus/prometheus.yml"}
RANGE = re.compile(r"\b(?:rate|irate|increase)\((?:[^()\[]|\([^()]*\))*\[([^\]]+)\]")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
EXEMPLARS = re.compile(r"gateway_(webhook_request|generation)_duration_seconds_bucket")
"""The histograms whose observations carry a trace_id exemplar (docs/metrics.md)."""
METRIC = re.compile(r"\b(gateway_[a-z_]+|job_kind:[a-z_:0-9]+|process_[a-z_]+|up)\b(?!\s*\()")


def test_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    written = {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file()}
    committed = {
        path.relative_to(DASHBOARDS).as_posix()
        for directory in GENERATED_DIRS
        for path in (DASHBOARDS / directory).rglob("*")
        if path.is_file()
    } - HAND_WRITTEN
    assert committed == written, "stale or missing generated files: run python -m dashboards.generate"
    for relative in sorted(written):
        assert (DASHBOARDS / relative).read_text() == (tmp_path / relative).read_text(), (
            f"dashboards/{relative} is out of date: run python -m dashboards.generate"
        )


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "grafana" / "gateway-slo.json").write_text("{}\n")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "grafana/gateway-slo.json" in capsys.readouterr().err


def test_generation_does_not_depend_on_hash_seeds(tmp_path: Path) -> None:
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        command = [sys.executable, "-m", "dashboards.generate", "--out", str(out)]
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        outputs.append({path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()})
    assert outputs[0] == outputs[1]


def convention_problems(dashboard: dict[str, Any]) -> list[str]:
    """What dashboard-linter's rules (and ours) would flag in one dashboard."""
    problems = []
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    datasource = variables.get("datasource", {})
    if datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.append("no Prometheus datasource variable")
    for name in ("job", "instance"):
        if variables.get(name, {}).get("type") != "query":
            problems.append(f"no {name} variable")
    for panel in panels(dashboard):
        where = f"panel {panel.get('title')!r}"
        if not panel.get("title"):
            problems.append(f"{where}: no title")
        if not panel.get("description"):
            problems.append(f"{where}: no description")
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: no unit")
        if panel["type"] == "heatmap" and not panel.get("options", {}).get("yAxis", {}).get("unit"):
            problems.append(f"{where}: heatmap axis without unit")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: not on the datasource variable")
        if not panel.get("targets"):
            problems.append(f"{where}: no query")
        for target in panel.get("targets", []):
            expr = target["expr"]
            problems += [
                f"{where}: rate over {window}" for window in RANGE.findall(expr) if window != "$__rate_interval"
            ]
            for metric, matchers in SELECTOR.findall(expr):
                if 'job=~"$job"' not in matchers:
                    problems.append(f"{where}: {metric} not filtered by $job")
                if ":" not in metric and 'instance=~"$instance"' not in matchers:
                    problems.append(f"{where}: {metric} not filtered by $instance")
            bare = [metric for metric in METRIC.findall(expr) if not re.search(rf"{re.escape(metric)}\{{", expr)]
            problems += [f"{where}: {metric} without selector" for metric in bare]
            if "histogram_quantile" in expr and EXEMPLARS.search(expr) and not target.get("exemplar"):
                problems.append(f"{where}: latency without exemplars")
    return problems


def test_every_dashboard_follows_the_conventions() -> None:
    boards = committed_dashboards()
    assert set(boards) == {"gateway-overview", "gateway-generation", "gateway-slo"}
    for uid, dashboard in boards.items():
        assert dashboard["uid"] == uid
        assert convention_problems(dashboard) == [], uid


def test_the_convention_check_catches_a_sloppy_panel() -> None:
    dashboard = copy.deepcopy(committed_dashboards()["gateway-overview"])
    panel = next(panel for panel in panels(dashboard) if panel["title"] == "Webhook latency")
    del panel["description"]
    panel["fieldConfig"]["defaults"].pop("unit")
    panel["targets"][0]["exemplar"] = False
    panel["targets"][1]["expr"] = panel["targets"][1]["expr"].replace("$__rate_interval", "5m")
    panel["targets"][2]["expr"] = panel["targets"][2]["expr"].replace(', instance=~"$instance"', "")
    panel["datasource"] = {"type": "prometheus", "uid": "some-prometheus"}
    assert convention_problems(dashboard) == [
        "panel 'Webhook latency': no description",
        "panel 'Webhook latency': no unit",
        "panel 'Webhook latency': not on the datasource variable",
        "panel 'Webhook latency': latency without exemplars",
        "panel 'Webhook latency': rate over 5m",
        "panel 'Webhook latency': gateway_webhook_request_duration_seconds_bucket not filtered by $instance",
    ]


def exported_names() -> set[str]:
    """Every series name the gateway exports, from its metric definitions and process collectors."""
    registry = CollectorRegistry()
    Metrics(registry, [kind.name for kind in KINDS], ModelLabels())
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "info": ("_info",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes.get(family.type, ("",))}


def test_every_metric_queried_exists() -> None:
    exported = exported_names() | {"up"}
    recorded = {
        rule["record"]
        for group in load_yaml(DASHBOARDS / "prometheus/rules.yml")["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    texts = [
        target["expr"]
        for board in committed_dashboards().values()
        for panel in panels(board)
        for target in panel["targets"]
    ]
    texts += [
        variable["query"]
        for board in committed_dashboards().values()
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
    ]
    texts += [
        rule["expr"] for group in load_yaml(DASHBOARDS / "prometheus/rules.yml")["groups"] for rule in group["rules"]
    ]
    used = {metric for text in texts for metric in METRIC.findall(text)}
    assert "gateway_jobs_finished_total" in used
    unknown = used - exported - recorded
    assert not unknown, f"queried but not exported by the gateway: {sorted(unknown)}"
    # The clock-skew histogram has negative buckets, hence no _sum: nothing may average it.
    assert "gateway_webhook_clock_skew_seconds_sum" not in used


def test_exemplars_open_traces_in_the_provisioned_trace_datasource() -> None:
    provisioned = load_yaml(DASHBOARDS / "provisioning" / "datasources" / "gateway.yml")["datasources"]
    by_uid = {source["uid"]: source for source in provisioned}
    prometheus = by_uid[CONFIG.prometheus_uid]
    assert prometheus["type"] == "prometheus"
    assert prometheus["jsonData"]["timeInterval"] == CONFIG.scrape_interval
    links = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    # The gateway labels its exemplars trace_id (docs/metrics.md).
    assert [(link["name"], by_uid[link["datasourceUid"]]["type"]) for link in links] == [("trace_id", "jaeger")]
    for dashboard in committed_dashboards().values():
        datasource = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
        assert datasource["current"]["value"] == CONFIG.prometheus_uid


def test_provisioned_folder_loads_the_generated_dashboards() -> None:
    providers = load_yaml(DASHBOARDS / "provisioning" / "dashboards" / "gateway.yml")["providers"]
    assert [(p["type"], p["folder"], p["options"]["path"]) for p in providers] == [
        ("file", CONFIG.folder, CONFIG.dashboards_path)
    ]
    assert render()["grafana/gateway-overview.json"] == (DASHBOARDS / "grafana" / "gateway-overview.json").read_text()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_generator_code_is_ruff_clean_and_formatted() -> None:
    for command in (("ruff", "check", "dashboards"), ("ruff", "format", "--check", "dashboards")):
        result = run(*command)
        assert result.returncode == 0, result.stdout + result.stderr


def test_generator_code_is_mypy_strict_clean() -> None:
    result = run("mypy", "--strict", "dashboards")
    assert result.returncode == 0, result.stdout + result.stderr
