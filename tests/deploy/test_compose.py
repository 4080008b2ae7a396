"""docker-compose.yml, read as YAML (no container engine here): every file it mounts exists, and every
service name and port it, the Prometheus and Grafana configuration and the gateway's settings use agree."""

from __future__ import annotations

import base64
import importlib.util
import ipaddress
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dashboards.config import CONFIG
from docs import generate
from gateway.config import PostgresDatabase, Settings
from gateway.signatures import sign
from tests.deploytools import missing
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
    assert set(SERVICES) == {
        "proxy",
        "migrate",
        "gateway",
        "redis",
        "postgres",
        "prometheus",
        "alertmanager",
        "grafana",
        "jaeger",
        "nats",
        "receiver",
    }
    # NATS and the example receiver are opt-in; everything else starts with a plain `up`.
    assert {name for name, spec in SERVICES.items() if spec.get("profiles")} == {"nats", "receiver"}
    assert all(SERVICES[name]["profiles"] == ["delivery"] for name in ("nats", "receiver"))


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


def gateway_environment(service: str = "gateway", extra: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment with every ${NAME:-default} resolved to its local-only default."""
    raw = {name: str(value) for name, value in SERVICES[service]["environment"].items()}
    return {name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value) for name, value in {**raw, **(extra or {})}.items()}


def test_replicas_share_postgres_and_redis_and_wait_for_one_migration() -> None:
    gateway = SERVICES["gateway"]
    assert gateway["deploy"]["replicas"] >= 2
    assert "ports" not in gateway, "replicas are reached through the proxy, never published themselves"
    assert gateway["build"] == "."
    environment = gateway_environment()
    known = generate.environment_names()
    unknown = {name for name in environment if name not in known and not name.startswith("OTEL_")}
    assert not unknown, f"the gateway reads no such variable: {sorted(unknown)}"
    settings = Settings.from_env(environment)
    assert settings.env == "production"
    assert settings.authenticates
    assert settings.api_token == "local-stack-only-token-change-me"
    assert settings.migrate_on_start is False
    assert settings.host == "0.0.0.0"  # inside the container, on purpose
    assert settings.port in container_ports("gateway")
    assert settings.forward_url is None
    assert settings.nats_url is None  # the delivery profile turns them on
    assert isinstance(settings.database, PostgresDatabase)
    assert_reaches(settings.database.url, "postgres")
    assert settings.redis_url is not None
    assert_reaches(settings.redis_url, "redis")
    assert_reaches(environment["OTEL_EXPORTER_OTLP_ENDPOINT"], "jaeger")
    assert urlsplit(environment["OTEL_EXPORTER_OTLP_ENDPOINT"]).port == 4318  # OTLP over HTTP
    assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    postgres = SERVICES["postgres"]["environment"]
    assert urlsplit(settings.database.url).username == postgres["POSTGRES_USER"]
    assert urlsplit(settings.database.url).path == f"/{postgres['POSTGRES_DB']}"
    # One migration, before any replica: the one-shot runs `gateway migrate` with the same settings.
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["gateway", "migrate"]
    assert migrate["build"] == "."
    assert migrate["image"] == gateway["image"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway_environment("migrate") == {
        name: value for name, value in environment.items() if name != "GATEWAY_MIGRATE_ON_START"
    }
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "not read by the gateway yet" not in text


def test_the_image_drains_before_it_is_killed() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage: the build tools stay in the first stage"
    assert stages[-1] == "python:3.11-slim"
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "pip uninstall -y pip setuptools wheel" in final
    user = re.findall(r"^USER (\S+)$", final, re.MULTILINE)
    assert user
    assert user[-1] not in ("root", "0")
    assert re.search(r'^CMD \["gateway", "serve", "--host", "0.0.0.0"\]$', final, re.MULTILINE)
    port = Settings.from_env(gateway_environment()).port
    assert f"EXPOSE {port}" in final
    assert f"http://127.0.0.1:{port}/readyz" in final
    assert re.search(r"^HEALTHCHECK ", final, re.MULTILINE)
    assert re.search(r"^STOPSIGNAL SIGTERM$", final, re.MULTILINE)
    gateway = SERVICES["gateway"]
    assert gateway["stop_signal"] == "SIGTERM"
    grace = int(gateway["stop_grace_period"].removesuffix("s"))
    drain = Settings.from_env(gateway_environment()).shutdown_timeout_seconds
    assert grace >= drain + 5, "Docker must not SIGKILL a replica while it drains and closes its stores"


def test_senders_post_to_one_proxy_over_every_replica() -> None:
    proxy = SERVICES["proxy"]
    assert proxy["image"].startswith("caddy:2")
    settings = Settings.from_env(gateway_environment())
    assert published_ports("proxy") == {8000: 8000}
    caddyfile = (ROOT / mounts("proxy")["/etc/caddy/Caddyfile"]).read_text()
    assert re.search(r"^:8000 \{", caddyfile, re.MULTILINE)
    upstream = re.search(r"dynamic a \{\s*name (\S+)\s*port (\d+)", caddyfile)
    assert upstream is not None
    assert (upstream[1], int(upstream[2])) == ("gateway", settings.port)
    # The gateway believes X-Forwarded-For from the proxy's fixed address only.
    address = proxy["networks"]["default"]["ipv4_address"]
    assert [str(network) for network in settings.trusted_proxies] == [f"{address}/32"]
    (subnet,) = COMPOSE["networks"]["default"]["ipam"]["config"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet["subnet"])


def test_caddy_accepts_the_caddyfile() -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        missing("caddy is not installed (Debian: apt-get install caddy)")
    result = subprocess.run(
        [str(caddy), "validate", "--adapter", "caddyfile", "--config", str(ROOT / "deploy/compose/Caddyfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_the_file_with_and_without_the_delivery_profile() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        missing("docker-compose is not installed (Debian: apt-get install --no-install-recommends docker-compose)")
    for extra in ([], ["--env-file", str(ROOT / "deploy/compose/delivery.env")]):
        result = subprocess.run(
            [str(compose), "-f", str(ROOT / "docker-compose.yml"), *extra, "config", "--services"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            env={"PATH": os.environ.get("PATH", "")},
        )
        assert result.returncode == 0, result.stderr
        # 1.29 lists every service whatever the profiles; the profile test below checks which are opt-in.
        assert set(result.stdout.split()) == set(SERVICES)


def test_the_delivery_profile_forwards_to_the_receiver_and_publishes_to_nats() -> None:
    values = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/compose/delivery.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert values["COMPOSE_PROFILES"] == "delivery"
    settings = Settings.from_env(
        gateway_environment(extra={name: values[name] for name in values if name in SERVICES["gateway"]["environment"]})
    )
    assert settings.forward_url is not None
    assert settings.forward_signing_key is not None
    assert settings.nats_url is not None
    assert_reaches(settings.forward_url, "receiver")
    assert_reaches(settings.nats_url, "nats")
    receiver = SERVICES["receiver"]
    assert "GATEWAY_FORWARD_SIGNING_KEY" in receiver["environment"]
    assert int(receiver["environment"]["RECEIVER_PORT"]) in container_ports("receiver")
    assert (ROOT / mounts("receiver")["/app/receiver.py"]).exists()
    assert "--jetstream" in SERVICES["nats"]["command"]


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
    # Every replica, found by DNS on the compose service name (one A record each), not one fixed target.
    assert "static_configs" not in job
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["gateway"]
    assert discovery["type"] == "A"
    assert discovery["port"] == Settings.from_env(gateway_environment()).port
    assert SERVICES["gateway"]["deploy"]["replicas"] >= 2
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
    section = (ROOT / "docs" / "deployment.md").read_text().split("## Compose", 1)[1].split("\n## ", 1)[0]
    assert "docker compose up" in section
    listed = {int(port) for port in re.findall(r"http://localhost:(\d+)", section)}
    expected = {
        published_ports(service)[port]
        for service, port in (
            ("proxy", 8000),
            ("grafana", 3000),
            ("prometheus", 9090),
            ("alertmanager", 9093),
            ("jaeger", 16686),
        )
    }
    assert listed == expected


def test_the_example_receiver_accepts_the_gateways_signature_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/compose/delivery.env").read_text().splitlines()
        if line and not line.startswith("#")
    )["GATEWAY_FORWARD_SIGNING_KEY"]
    monkeypatch.setenv("GATEWAY_FORWARD_SIGNING_KEY", key)
    spec = importlib.util.spec_from_file_location("compose_receiver", ROOT / "deploy/compose/receiver.py")
    assert spec is not None
    assert spec.loader is not None
    receiver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(receiver)
    raw_key = base64.b64decode(key.removeprefix("whsec_"))
    body = b'{"job_id":"j-1","status":"completed"}'
    now = str(int(time.time()))
    signature = sign(raw_key, "evt_1", now, body)
    assert receiver.verified("evt_1", now, body, signature)
    assert receiver.verified("evt_1", now, body, f"v1,b2xk {signature}")  # a rotated key's signature first
    assert not receiver.verified("evt_1", now, body + b" ", signature)
    assert not receiver.verified("evt_2", now, body, signature)
    stale = str(int(time.time()) - 600)
    assert not receiver.verified("evt_1", stale, body, sign(raw_key, "evt_1", stale, body))
