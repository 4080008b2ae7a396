"""The ``gateway`` command as an operator runs it: a real ``python -m gateway`` subprocess per test."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from gateway import __version__
from gateway.stores import migrations
from tests.conftest import LiveServer, free_port

SQLITE_VERSIONS = [migration.version for migration in migrations.load("sqlite")]
POSTGRES_VERSIONS = [migration.version for migration in migrations.load("postgresql")]

_OUR_VARIABLES = ("GATEWAY_", "WEBHOOK_", "DATABASE_URL")


def run_gateway(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS`` in ``cwd`` with none of the caller's gateway variables, plus ``env``.

    A ``serve`` that wrongly starts would block: the timeout turns that into a test failure.
    """
    clean = {name: value for name, value in os.environ.items() if not name.startswith(_OUR_VARIABLES)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def schema_of(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def migrations_of(path: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()


def test_help_lists_the_commands(tmp_path: Path) -> None:
    """``gateway --help`` tells an operator which commands exist."""
    result = run_gateway(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    assert "migrate" in result.stdout


def test_serve_help_lists_its_options(tmp_path: Path) -> None:
    """``gateway serve --help`` documents the bind address, the port and the worker count."""
    result = run_gateway(tmp_path, "serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--workers"):
        assert option in result.stdout


def test_version_is_printed(tmp_path: Path) -> None:
    result = run_gateway(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gateway {__version__}"


def test_serve_refuses_several_workers(tmp_path: Path) -> None:
    """The embedded stores belong to one process, so ``--workers 2`` stops with a reason instead of serving."""
    result = run_gateway(tmp_path, "serve", "--workers", "2")
    assert result.returncode == 2
    assert "workers" in result.stderr


def test_serve_with_a_bad_setting_exits_2_naming_it(tmp_path: Path) -> None:
    """A typo in the environment stops start-up with the variable's name on stderr."""
    result = run_gateway(tmp_path, "serve", env={"GATEWAY_PORT": "abc"})
    assert result.returncode == 2
    assert "GATEWAY_PORT" in result.stderr
    assert "configuration error" in result.stderr


def test_serve_in_production_without_credentials_exits_2(tmp_path: Path) -> None:
    """Production refuses to run a gateway that would accept anyone's webhooks, and says what is missing."""
    result = run_gateway(tmp_path, "serve", env={"GATEWAY_ENV": "production"})
    assert result.returncode == 2
    assert "production" in result.stderr
    assert "WEBHOOK_SECRET" in result.stderr
    assert "WEBHOOK_SIGNING_KEYS" in result.stderr
    assert not (tmp_path / "gateway.db").exists()


def test_migrate_creates_the_schema_then_is_a_no_op(tmp_path: Path) -> None:
    """``gateway migrate`` sets up a fresh database once; running it again reports it up to date."""
    database = tmp_path / "m.db"
    env = {"DATABASE_URL": f"sqlite:///{database}"}
    assert env["DATABASE_URL"].startswith("sqlite:////")

    first = run_gateway(tmp_path, "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert f"applied migrations {', '.join(map(str, SQLITE_VERSIONS))} " in first.stdout
    tables = {name for kind, name, _ in schema_of(database) if kind == "table"}
    assert {"jobs", "job_events", "deliveries", "schema_migrations"} <= tables
    recorded = migrations_of(database)
    assert [version for version, _, _ in recorded] == SQLITE_VERSIONS

    schema = schema_of(database)
    second = run_gateway(tmp_path, "migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert "applied" not in second.stdout
    assert schema_of(database) == schema
    assert migrations_of(database) == recorded


def test_migrate_into_a_missing_directory_exits_2(tmp_path: Path) -> None:
    """A DATABASE_URL pointing into a directory that does not exist is refused before any file is created."""
    missing = tmp_path / "no-such-dir" / "m.db"
    result = run_gateway(tmp_path, "migrate", env={"DATABASE_URL": f"sqlite:///{missing}"})
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert not missing.parent.exists()


def test_an_otel_setting_the_gateway_cannot_honour_stops_start_up(tmp_path: Path) -> None:
    result = run_gateway(
        tmp_path,
        "serve",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    )
    assert result.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_out_of_range_is_refused(tmp_path: Path) -> None:
    result = run_gateway(tmp_path, "serve", "--port", "70000")
    assert result.returncode == 2
    assert "--port" in result.stderr


def test_migrate_on_postgresql_creates_the_schema_then_is_a_no_op(tmp_path: Path, database_url: str) -> None:
    """``gateway migrate`` works the same on PostgreSQL, and names the database without its password."""
    env = {"DATABASE_URL": database_url}
    first = run_gateway(tmp_path, "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert f"applied migrations {', '.join(map(str, POSTGRES_VERSIONS))} " in first.stdout
    second = run_gateway(tmp_path, "migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


def test_migrate_against_an_unreachable_postgresql_fails_without_echoing_the_password(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_gateway(tmp_path, "migrate", env={"DATABASE_URL": f"postgresql://gw:s3cret-pw@127.0.0.1:{port}/gw"})
    assert result.returncode == 1
    assert "cannot migrate" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_deliveries_list_with_forwarding_off_says_how_to_turn_it_on(tmp_path: Path) -> None:
    """An empty listing is explained: forwarding is off and which variable turns it on (on stderr, so
    stdout stays one JSON object a line); with forwarding on, an empty listing says nothing matched."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"}
    unmigrated = run_gateway(tmp_path, "deliveries", "list", env=env)
    assert "forwarding is off" in unmigrated.stderr  # said first, whatever the store answers
    assert run_gateway(tmp_path, "migrate", env=env).returncode == 0

    off = run_gateway(tmp_path, "deliveries", "list", env=env)
    assert off.returncode == 0, off.stderr
    assert off.stdout == ""
    assert "forwarding is off" in off.stderr
    assert "GATEWAY_FORWARD_URL" in off.stderr

    on = run_gateway(tmp_path, "deliveries", "list", env={**env, "GATEWAY_FORWARD_URL": "http://127.0.0.1:9/hooks"})
    assert on.returncode == 0, on.stderr
    assert on.stdout == ""
    assert "no deliveries match" in on.stderr
    assert "forwarding is off" not in on.stderr


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The serve's stderr, which must be exactly one line, and no traceback anywhere."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_serve_with_a_missing_postgresql_database_says_so_in_one_line(tmp_path: Path, postgres_database: str) -> None:
    """A DATABASE_URL naming a database that does not exist: one line naming the URL without its password
    and what to check, not a 90-line exception group."""
    server = urlsplit(postgres_database)
    url = f"postgresql://{server.username}:s3cret-pw@{server.hostname}:{server.port}/no_such_gateway_db"
    line = _one_line(run_gateway(tmp_path, "serve", "--port", str(free_port()), env={"DATABASE_URL": url}))
    assert line.startswith(
        f"gateway: cannot open the job store at postgresql://{server.username}:***@{server.hostname}:{server.port}"
        '/no_such_gateway_db (InvalidCatalogNameError: database "no_such_gateway_db" does not exist). '
        "Check DATABASE_URL: "
    )
    assert "the database exists" in line
    assert "s3cret-pw" not in line


def test_serve_against_a_wrong_postgresql_port_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://gw:s3cret-pw@127.0.0.1:{free_port()}/gw"
    result = run_gateway(tmp_path, "serve", "--port", str(free_port()), env={"DATABASE_URL": url})
    line = _one_line(result)
    assert "cannot open the job store at postgresql://gw:***@127.0.0.1:" in line
    assert "listens at that host and port" in line
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_serve_with_an_unusable_sqlite_path_names_it_in_one_line(tmp_path: Path) -> None:
    """A path the gateway cannot open as a database file (here a directory) is named, absolute."""
    directory = tmp_path / "a-directory"
    directory.mkdir()
    result = run_gateway(tmp_path, "serve", "--port", str(free_port()), env={"DATABASE_URL": f"sqlite:///{directory}"})
    line = _one_line(result)
    assert line.startswith(f"gateway: cannot open the job store at {directory} (OperationalError: ")
    assert "the path must name a file (not a directory) in a directory the gateway may write to" in line


def test_serve_at_debug_level_also_logs_the_traceback(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    env = {"DATABASE_URL": f"sqlite:///{directory}", "GATEWAY_LOG_LEVEL": "debug"}
    result = run_gateway(tmp_path, "serve", "--port", str(free_port()), env=env)
    assert result.returncode != 0
    assert "gateway: cannot open the job store at" in result.stderr
    assert "Traceback" in result.stdout


def test_serve_on_a_port_in_use_says_so_and_names_the_options(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gateway(tmp_path, "serve", "--port", str(port))
    line = _one_line(result)
    assert line == (
        f"gateway: port {port} on 127.0.0.1 is already in use (another gateway or program listens there): "
        "stop it, or choose another port with --port or GATEWAY_PORT"
    )
    assert not (tmp_path / "gateway.db").exists()


def test_serve_prints_where_to_look_and_warns_once_without_credentials(tmp_path: Path) -> None:
    """Once it listens: the status page, API docs and metrics URLs (each answers); the warning about
    accepting unauthenticated webhooks appears once."""
    server = LiveServer(tmp_path, {})
    try:
        for path in ("/status", "/schema", "/metrics"):
            assert httpx.get(f"{server.url}{path}", timeout=5).status_code == 200
    finally:
        server.stop()
    output = server.log.read_text()  # once stopped: log lines are written by a thread of their own
    assert f"gateway: listening on {server.url}\n" in output
    for path in ("/status", "/schema", "/metrics"):
        assert f"{server.url}{path}\n" in output
    warnings = [line for line in output.splitlines() if "WEBHOOK_SIGNING_KEYS" in line]
    assert len(warnings) == 1, warnings
    assert "NO AUTHENTICATION" in warnings[0]


def test_serve_with_redis_not_answering_starts_and_says_what_that_means(tmp_path: Path) -> None:
    """Redis may come back, so it does not stop start-up (as the rate limiter's store does not), but the
    operator reads at once that webhooks are refused until it answers, and what to check."""
    port = free_port()
    server = LiveServer(
        tmp_path, {"WEBHOOK_SECRET": "a-secret-for-this-test", "REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    )
    server.stop()
    output = server.log.read_text()
    assert f"REDIS_URL (redis://:***@127.0.0.1:{port}/0) does not answer: webhooks are answered 503" in output
    assert "hunter2" not in output
    assert "Traceback" not in output
