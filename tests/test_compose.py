"""docker-compose.yml, read as YAML (no container engine here): every file it mounts exists, and every
service name and port it, the Prometheus and Grafana configuration and the gateway's settings use agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dashboards.config import CONFIG
from gateway.config import Settings
from tests.monitoring import DASHBOARDS, ROOT, binary, load_yaml

COMPOSE: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = load_yaml(DASHBOARDS / "prometheus" / "prometheus.yml")
DATASOURCES = load_yaml(DASHBOARDS / "provisioning" / "datasources" / "gateway.yml")["datasources"]


def container_ports(service: str) -> set[int]:
    """Ports a service listens on inside the stack's network (published or only exposed)."""
    spec = SERVICES[service]
    published = {int(str(mapping).split(":")[-1]) for mapping in spec.get("ports", [])}
    return published | {int(port) for port in spec.get("expose", [])}


def published_ports(service: str) -> dict[int, int]:
    """Container port -> host port of a service's published ports."""
    pairs = (str(mapping).split(":") for mapping in SERVICES[service].get("ports", []))
    return {int(container): int(host) for host, container in pairs}


def mounts(service: str) -> dict[str, str]:
    """Container path -> repository path of a service's bind mounts (named volumes left out)."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = source.removeprefix("./")
    return found


def flag(service: str, name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in SERVICES[service]["command"] if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"{service}: --{name} not set once"
    return values[0]


def assert_reaches(url: str, service: str) -> None:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    assert parts.hostname == service, f"{url} does not name the {service} service"
    assert parts.port in container_ports(service), f"{url}: {service} does not listen on {parts.port}"


def test_the_stack_has_every_service() -> None:
    assert set(SERVICES) == {"gateway", "redis", "postgres", "prometheus", "alertmanager", "grafana", "jaeger"}


def test_every_mounted_file_exists_and_every_volume_is_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, spec in SERVICES.items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_host_ports_are_unique() -> None:
    hosts = [host for service in SERVICES for host in published_ports(service).values()]
    assert len(hosts) == len(set(hosts))


def test_gateway_is_built_here_and_configured_with_its_real_settings() -> None:
    gateway = SERVICES["gateway"]
    assert gateway["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert re.search(r'^CMD \["gateway", "serve", "--host", "0.0.0.0"\]$', dockerfile, re.MULTILINE)
    environment = {name: str(value) for name, value in gateway["environment"].items()}
    known = set(re.findall(r'get\("([A-Z_]+)"\)', (ROOT / "gateway" / "config.py").read_text()))
    unknown = {name for name in environment if name not in known and not name.startswith("OTEL_")}
    assert not unknown, f"the gateway reads no such variable: {sorted(unknown)}"
    # The values are valid for the gateway itself (the database directory only exists in the container).
    resolved = {name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value) for name, value in environment.items()}
    settings = Settings.from_env({**resolved, "DATABASE_URL": "sqlite:///:memory:"})
    assert settings.env == "production"
    assert settings.authenticates
    port = settings.port
    assert settings.host == "0.0.0.0"  # inside the container, on purpose
    assert port in published_ports("gateway")
    assert f"EXPOSE {port}" in dockerfile
    assert f"http://127.0.0.1:{port}/readyz" in dockerfile
    database = environment["DATABASE_URL"]
    assert database.startswith("sqlite:////")
    assert any(
        Path(database.removeprefix("sqlite:///")).parent == Path(volume.split(":")[1]) for volume in gateway["volumes"]
    ), "the SQLite file must live on a volume"
    assert_reaches(environment["OTEL_EXPORTER_OTLP_ENDPOINT"], "jaeger")
    assert urlsplit(environment["OTEL_EXPORTER_OTLP_ENDPOINT"]).port == 4318  # OTLP over HTTP
    assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"


def test_prometheus_scrapes_the_gateway_with_the_generated_rules_and_exemplars() -> None:
    assert flag("prometheus", "enable-feature") == "exemplar-storage"
    config_path = flag("prometheus", "config.file")
    files = mounts("prometheus")
    assert files[config_path] == "dashboards/prometheus/prometheus.yml"
    config_dir = Path(config_path).parent
    for rule_file in PROMETHEUS["rule_files"]:
        assert files[str(config_dir / rule_file)] == "dashboards/prometheus/rules.yml"
    assert PROMETHEUS["global"]["scrape_interval"] == CONFIG.scrape_interval
    (job,) = [job for job in PROMETHEUS["scrape_configs"] if job["job_name"] == CONFIG.job]
    targets = [target for static in job["static_configs"] for target in static["targets"]]
    gateway_port = int(SERVICES["gateway"]["environment"]["GATEWAY_PORT"])
    assert targets == [f"gateway:{gateway_port}"]
    for manager in PROMETHEUS["alerting"]["alertmanagers"]:
        for target in (t for static in manager["static_configs"] for t in static["targets"]):
            assert_reaches(target, "alertmanager")


def test_promtool_accepts_the_stacks_prometheus_config() -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "config", str(DASHBOARDS / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_pages_on_critical_and_tickets_on_warning() -> None:
    config_path = flag("alertmanager", "config.file")
    assert mounts("alertmanager")[config_path] == "dashboards/alertmanager/alertmanager.yml"
    config = f"--config.file={DASHBOARDS / 'alertmanager' / 'alertmanager.yml'}"
    amtool = binary("amtool")
    checked = subprocess.run(
        [amtool, "check-config", config.split("=", 1)[1]], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for labels, receiver in (
        (["severity=critical", "alertname=GatewayDown"], "page"),
        (["severity=warning", "alertname=GatewayJobsStuck"], "ticket"),
        (["alertname=SomethingElse"], "ticket"),
    ):
        result = subprocess.run(
            [amtool, "config", "routes", "test", config, *labels], capture_output=True, text=True, check=False
        )
        assert result.stdout.strip() == receiver, (labels, result.stdout + result.stderr)


def test_grafana_is_provisioned_read_only_with_the_generated_files() -> None:
    grafana = SERVICES["grafana"]
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    files = mounts("grafana")
    assert files["/etc/grafana/provisioning/datasources"] == "dashboards/provisioning/datasources"
    assert files["/etc/grafana/provisioning/dashboards"] == "dashboards/provisioning/dashboards"
    assert files[CONFIG.dashboards_path] == "dashboards/grafana"
    home = Path(environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == CONFIG.dashboards_path
    assert (DASHBOARDS / "grafana" / home.name).exists()
    by_type = {source["type"]: source["url"] for source in DATASOURCES}
    assert_reaches(by_type["prometheus"], "prometheus")
    assert_reaches(by_type["jaeger"], "jaeger")


def test_documented_full_stack_urls_are_the_published_ports() -> None:
    assert "docker compose up" in (ROOT / "README.md").read_text()
    section = (ROOT / "docs" / "deployment.md").read_text().split("## Full stack", 1)[1].split("\n## ", 1)[0]
    assert "docker compose up" in section
    listed = {int(port) for port in re.findall(r"http://localhost:(\d+)", section)}
    expected = {
        published_ports(service)[port]
        for service, port in (
            ("gateway", 8000),
            ("grafana", 3000),
            ("prometheus", 9090),
            ("alertmanager", 9093),
            ("jaeger", 16686),
        )
    }
    assert listed == expected
