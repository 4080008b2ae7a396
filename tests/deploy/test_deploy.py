"""The Kubernetes manifests (deploy/kubernetes/): rendered by ``kubectl kustomize``, validated against a
current Kubernetes release's schemas (``kubernetes-validate --strict``), scanned by ``checkov`` with the
Dockerfile, and checked against the gateway's own settings, health routes, drain and generated rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from dashboards.config import CONFIG
from dashboards.generate import DEPLOY_ROOT, main
from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.model import JobEvent, Status
from gateway.stores.base import StoreUnavailable
from tests.backends import postgres_job_store
from tests.conftest import free_port
from tests.deploytools import PINNED, kubectl, missing, venv_tool
from tests.monitoring import DASHBOARDS, ROOT, committed_dashboards, load_yaml

BASE = ROOT / "deploy" / "kubernetes" / "base"
OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "production"
KUBERNETES_VERSION = "1.37.0"
"""The newest release kubernetes-validate 1.37 ships schemas for."""
OPERATOR_KINDS = {"PrometheusRule", "ServiceMonitor"}
"""CRDs of the Prometheus Operator: kubernetes-validate ships no schema for them and this machine has no
offline copy of the Operator's published CRDs, so strict schema validation skips them (the warning is
asserted below); their content is checked by the tests here instead (groups, selectors, ports)."""
PRE_STOP_SECONDS = 5
FAKE_SECRETS = {
    "DATABASE_URL": "postgresql://gateway:x@postgres:5432/gateway",
    "REDIS_URL": "redis://redis:6379/0",
    "WEBHOOK_SECRET": "a-webhook-secret",
    "GATEWAY_API_TOKEN": "a-read-api-token-of-16+",
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``kubectl kustomize`` of the base and the overlay, each written to one file (rendered once)."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, directory in (("base", BASE), ("overlay", OVERLAY)):
        result = subprocess.run(
            [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stderr
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout)
    return files


def objects(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Rendered objects by (kind, name)."""
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def environment(rendered_objects: dict[tuple[str, str], dict[str, Any]], spec: dict[str, Any]) -> dict[str, str]:
    """What the container's environment resolves to, with stand-ins for the Secret's values."""
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(rendered_objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for variable in spec.get("env", []):
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "gateway-secrets"
        env[variable["name"]] = FAKE_SECRETS[reference["key"]]
    return env


def test_base_and_overlay_render_every_object(rendered: dict[str, Path]) -> None:
    expected = {
        ("ServiceAccount", "gateway"),
        ("ConfigMap", "gateway-config"),
        ("Job", "gateway-migrate"),
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("PodDisruptionBudget", "gateway"),
        ("NetworkPolicy", "gateway"),
        ("NetworkPolicy", "gateway-migrate"),
        ("ServiceMonitor", "gateway"),
        ("PrometheusRule", "gateway-rules"),
        *(("ConfigMap", f"gateway-dashboard-{uid.removeprefix('gateway-')}") for uid in committed_dashboards()),
    }
    for path in rendered.values():
        found = objects(path)
        assert set(found) == expected
        # Credentials are referenced, never shipped.
        assert not any(kind == "Secret" for kind, _ in found)


@pytest.mark.timeout(900)  # the first run may install the tool (.ci/services does it beforehand)
def test_every_object_validates_against_the_kubernetes_schemas(rendered: dict[str, Path]) -> None:
    result = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, *map(str, rendered.values())],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    unvalidated = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    assert unvalidated == OPERATOR_KINDS, output
    assert "ERROR" not in output, output


@pytest.mark.timeout(900)  # the first run may install the tool (.ci/services does it beforehand)
def test_checkov_finds_no_failed_check_and_every_skip_says_why(rendered: dict[str, Path], tmp_path: Path) -> None:
    scanned = tmp_path / "scanned"
    scanned.mkdir()
    for name, path in rendered.items():
        (scanned / f"{name}.yaml").write_text(path.read_text())
    (scanned / "Dockerfile").write_text((ROOT / "Dockerfile").read_text())
    result = subprocess.run(
        [
            venv_tool("checkov"),
            "-d",
            str(scanned),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=tmp_path,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {report["check_type"] for report in reports} == {"kubernetes", "dockerfile"}, result.stdout[-2000:]
    for report in reports:
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert not failed, f"{report['check_type']}: {failed}"
        assert report["summary"]["parsing_errors"] == 0
        for check in report["results"]["skipped_checks"]:
            assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]
    kubernetes = next(report for report in reports if report["check_type"] == "kubernetes")
    assert kubernetes["summary"]["passed"] > 100


def test_the_deployment_drains_within_its_grace_period_on_the_gateways_endpoints(rendered: dict[str, Path]) -> None:
    found = objects(rendered["base"])
    deployment = found[("Deployment", "gateway")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    gateway = container(deployment)
    settings = Settings.from_env(environment(found, gateway))
    assert spec["replicas"] >= 2
    assert settings.env == "production"
    assert settings.authenticates
    assert settings.api_token
    assert settings.migrate_on_start is False  # the Job migrates, replicas never race to
    assert settings.host == "0.0.0.0"
    (port,) = gateway["ports"]
    assert port["containerPort"] == settings.port
    routes = set(create_app(Settings(database=SqliteDatabase(":memory:"))).openapi_schema.paths or {})
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP_SECONDS)]
    # preStop, then the drain, then closing the stores, all before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= PRE_STOP_SECONDS + settings.shutdown_timeout_seconds + 5
    assert gateway["resources"]["requests"]["cpu"]
    assert gateway["resources"]["limits"]["cpu"] == "1"


def test_pods_run_restricted(rendered: dict[str, Path]) -> None:
    found = objects(rendered["overlay"])
    for key in (("Deployment", "gateway"), ("Job", "gateway-migrate")):
        pod = found[key]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for spec in pod["containers"]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert spec["image"] == "registry.example.com/platform/gateway:0.1.0"
    assert found[("ServiceAccount", "gateway")]["automountServiceAccountToken"] is False
    spread = found[("Deployment", "gateway")]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    migrate = found[("Job", "gateway-migrate")]["spec"]["template"]["spec"]["containers"][0]
    assert migrate["command"] == ["gateway", "migrate"]
    assert Settings.from_env(environment(found, migrate)).database.__class__.__name__ == "PostgresDatabase"


def test_service_monitor_hpa_pdb_and_network_policy_point_at_the_pods(rendered: dict[str, Path]) -> None:
    for name, path in rendered.items():
        found = objects(path)
        pod_labels = found[("Deployment", "gateway")]["spec"]["template"]["metadata"]["labels"]
        service = found[("Service", "gateway")]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        (port,) = service["spec"]["ports"]
        monitor = found[("ServiceMonitor", "gateway")]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == [port["name"]]
        # The Operator names the job after the Service: the generated rules select on it.
        assert service["metadata"]["name"] == CONFIG.job
        hpa = found[("HorizontalPodAutoscaler", "gateway")]["spec"]
        assert hpa["minReplicas"] >= 2
        assert hpa["scaleTargetRef"]["name"] == "gateway"
        pdb = found[("PodDisruptionBudget", "gateway")]["spec"]
        assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
        policy = found[("NetworkPolicy", "gateway")]["spec"]
        assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
        namespaces = [
            rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in policy["ingress"]
        ]
        assert all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in policy["ingress"])
        assert namespaces == (
            ["ingress-nginx", "monitoring"] if name == "base" else ["ingress-nginx", "kube-prometheus-stack"]
        )
    overlay = objects(rendered["overlay"])
    assert overlay[("ServiceMonitor", "gateway")]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert overlay[("Deployment", "gateway")]["metadata"]["namespace"] == "gateway-production"


def test_the_prometheus_rule_is_the_rule_file_and_dashboards_are_sidecar_configmaps(rendered: dict[str, Path]) -> None:
    found = objects(rendered["base"])
    rules = load_yaml(DASHBOARDS / "prometheus" / "rules.yml")
    assert found[("PrometheusRule", "gateway-rules")]["spec"]["groups"] == rules["groups"]
    for uid, dashboard in committed_dashboards().items():
        configmap = found[("ConfigMap", f"gateway-dashboard-{uid.removeprefix('gateway-')}")]
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(configmap["data"][f"{uid}.json"]) == dashboard


def test_generated_copies_in_deploy_are_current(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "dashboards"), "--deploy-out", str(tmp_path / "deploy")]) == 0
    written = {p.relative_to(tmp_path / "deploy").as_posix() for p in (tmp_path / "deploy").rglob("*") if p.is_file()}
    committed = {p.relative_to(DEPLOY_ROOT).as_posix() for p in (DEPLOY_ROOT / "generated").rglob("*") if p.is_file()}
    assert committed == written, "stale or missing copies: run python -m dashboards.generate"
    for relative in sorted(written):
        assert (DEPLOY_ROOT / relative).read_text() == (tmp_path / "deploy" / relative).read_text(), (
            f"deploy/kubernetes/base/{relative} is out of date: run python -m dashboards.generate"
        )


def test_ci_installs_the_versions_the_tests_pin() -> None:
    services = (ROOT / ".ci" / "services").read_text()
    for pinned in PINNED.values():
        assert pinned in services, f".ci/services does not install {pinned}"


PGBOUNCER_INI = """[databases]
* = host={host} port={port} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = any
pool_mode = {mode}
default_pool_size = {servers}
max_client_conn = 200
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


async def _through_pgbouncer(directory: Path, mode: str, servers: int) -> tuple[int, list[BaseException]]:
    """Apply and read 400 times concurrently through a PgBouncer in ``mode`` with ``servers`` server
    connections, from one gateway store with a pool of 10; answers how many calls worked and the errors."""
    pgbouncer = shutil.which("pgbouncer")
    if pgbouncer is None:
        missing("pgbouncer is not installed (Debian: apt-get install --no-install-recommends pgbouncer)")
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    server = urlsplit(admin_url)
    name = f"gw_pgbouncer_{uuid.uuid4().hex[:8]}"
    try:
        admin = await asyncpg.connect(admin_url)
    except (OSError, asyncpg.PostgresError) as error:
        missing(f"no PostgreSQL at TEST_DATABASE_URL ({error})")
    await admin.execute(f'CREATE DATABASE "{name}"')
    directory.chmod(0o777)  # PgBouncer refuses to run as root: under root it runs as postgres
    listen = free_port()
    (directory / "pgbouncer.ini").write_text(
        PGBOUNCER_INI.format(
            host=server.hostname,
            port=server.port or 5432,
            user=server.username,
            listen=listen,
            mode=mode,
            servers=servers,
            directory=directory,
        )
    )
    command = [pgbouncer, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(directory / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worked, errors = 0, []
    try:
        migrated = postgres_job_store(admin_url.rsplit("/", 1)[0] + f"/{name}")
        await migrated.open()  # the migration connects directly, as the migrations Job would
        await migrated.close()
        store = postgres_job_store(f"postgresql://{server.username}@127.0.0.1:{listen}/{name}", pool_size=10)
        for _ in range(50):  # PgBouncer takes a moment to listen
            with contextlib.suppress(StoreUnavailable):
                await store.open(apply_migrations=False)
                await store.ping()
                break
            await store.close()
            await asyncio.sleep(0.1)
        start = datetime(2025, 10, 21, 16, 40, tzinfo=UTC)

        async def call(work: Awaitable[Any]) -> None:
            nonlocal worked
            try:
                await work
                worked += 1
            except StoreUnavailable as error:
                errors.append(error.__cause__ or error)

        for round_ in range(2):
            await asyncio.gather(
                *(
                    call(
                        store.apply(
                            JobEvent(
                                kind="image",
                                job_id=f"j{round_}-{i}",
                                status=Status.COMPLETED,
                                timestamp=start,
                                received_at=datetime.now(UTC),
                            )
                        )
                    )
                    for i in range(100)
                ),
                *(call(store.get(f"j{round_}-{i}")) for i in range(100)),
            )
        await store.close()
    finally:
        process.terminate()
        process.wait(10)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return worked, errors


async def test_pgbouncer_transaction_mode_breaks_the_gateways_prepared_statements() -> None:
    """docs/scale.md's claim: asyncpg's statement cache (named prepared statements on each connection)
    does not survive PgBouncer's transaction pooling, which hands a transaction to any server connection:
    calls fail (503 for a webhook, never a wrong answer). Session pooling with a server connection per
    pooled client works, but pools nothing beyond the gateway's own pool."""
    # Not pytest's tmp_path: its parents are private to root, and PgBouncer runs as postgres.
    with tempfile.TemporaryDirectory(prefix="gateway-pgbouncer-") as transaction:
        worked, errors = await _through_pgbouncer(Path(transaction), "transaction", servers=2)
    assert errors, "PgBouncer's transaction mode now carries the gateway: update docs/scale.md"
    assert all(isinstance(error, asyncpg.InvalidSQLStatementNameError) for error in errors), errors[:3]
    with tempfile.TemporaryDirectory(prefix="gateway-pgbouncer-") as session:
        worked, errors = await _through_pgbouncer(Path(session), "session", servers=10)
    assert not errors, errors[:3]
    assert worked == 400


def test_check_mode_reports_a_drifted_deploy_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--out", str(tmp_path / "dashboards"), "--deploy-out", str(tmp_path / "deploy")]
    assert main(arguments) == 0
    assert main([*arguments, "--check"]) == 0
    (tmp_path / "deploy" / "generated" / "prometheusrule.yaml").write_text("spec: {}\n")
    assert main([*arguments, "--check"]) == 1
    assert "generated/prometheusrule.yaml" in capsys.readouterr().err
