"""No command or log line prints a password, wherever it sits in a URL (user-info or query)."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest

from gateway.config import PostgresDatabase
from gateway.redact import scrub, shown_url, url_secrets
from gateway.telemetry.logs import BatchingHandler, ConsoleFormatter, JsonFormatter
from tests.conftest import SECRET, LiveServer, free_port
from tests.test_cli import run_gateway


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gw:pw-1@db:5432/gw", "postgresql://gw:***@db:5432/gw"),
        ("postgresql://gw@db/gw?password=pw-1", "postgresql://gw@db/gw?password=***"),
        (
            "postgresql://db/gw?sslmode=require&password=pw-1&user=gw",
            "postgresql://db/gw?sslmode=require&password=***&user=gw",
        ),
        ("postgresql://gw:p%40ss@db/gw?sslpassword=pw-2", "postgresql://gw:***@db/gw?sslpassword=***"),
        ("postgresql://gw:p@ss@db/gw", "postgresql://gw:***@db/gw"),
        ("redis://:pw-1@cache:6379/0", "redis://:***@cache:6379/0"),
        ("unix:///run/redis.sock?password=pw-1&db=2", "unix:///run/redis.sock?password=***&db=2"),
        ("nats://user:pw-1@nats:4222", "nats://user:***@nats:4222"),
        ("https://app.example/hooks?api_key=pw-1&tenant=7", "https://app.example/hooks?api_key=***&tenant=7"),
        ("https://u:pw-1@otlp:4318/v1/traces?token=pw-2", "https://u:***@otlp:4318/v1/traces?token=***"),
        ("https://app.example/hooks", "https://app.example/hooks"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_every_password_in_a_url_is_masked(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_the_database_url_is_shown_through_the_same_function() -> None:
    assert PostgresDatabase("postgresql://gw@db/gw?password=pw-1").shown == "postgresql://gw@db/gw?password=***"


def test_scrub_removes_a_password_a_driver_quoted_raw_or_decoded() -> None:
    url = "postgresql://gw:p%40ss-1@db/gw?password=pw-2"
    text = "cannot connect as gw with p@ss-1 (p%40ss-1), then pw-2"
    assert scrub(text, url) == "cannot connect as gw with *** (***), then ***"
    assert scrub("nothing to hide", None, "redis://cache") == "nothing to hide"


def test_migrate_never_prints_a_password_of_the_database_url(tmp_path: Path, database_url: str) -> None:
    """The server trusts local connections, so the passwords are ignored and the migration runs: both
    its lines (applied, up to date) name the database."""
    with_passwords = database_url.replace("postgresql://postgres@", "postgresql://postgres:userinfo-pw-1@")
    with_passwords += "&password=query-pw-2"
    for _ in range(2):
        result = run_gateway(tmp_path, "migrate", env={"DATABASE_URL": with_passwords})
        assert result.returncode == 0, result.stderr
        assert "postgresql://postgres:***@" in result.stdout
        assert "password=***" in result.stdout
        assert "pw-1" not in result.stdout + result.stderr
        assert "pw-2" not in result.stdout + result.stderr


def test_migrate_that_fails_never_prints_a_password(tmp_path: Path) -> None:
    url = f"postgresql://gw@127.0.0.1:{free_port()}/gw?password=query-pw-2"
    result = run_gateway(tmp_path, "migrate", env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert "cannot migrate" in result.stderr
    assert "pw-2" not in result.stdout + result.stderr


def test_start_up_names_every_url_without_its_password(tmp_path: Path, stopping: list[LiveServer]) -> None:
    """Nothing answers at the Redis, NATS, forwarding or OTLP address: start-up goes on (each retries),
    and its lines name every URL with the passwords masked."""
    closed = free_port()
    env = {
        "WEBHOOK_SECRET": SECRET,
        "REDIS_URL": f"redis://:redis-pw-1@127.0.0.1:{closed}/0?password=redis-pw-2",
        "GATEWAY_FORWARD_URL": f"http://hook:forward-pw-1@127.0.0.1:{closed}/hooks?token=forward-pw-2",
        "GATEWAY_NATS_URL": f"nats://nats:nats-pw-1@127.0.0.1:{closed}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://otlp:otlp-pw-1@127.0.0.1:{closed}?auth=otlp-pw-2",
    }
    server = LiveServer(tmp_path, env)
    stopping.append(server)
    server.stop()
    log = server.log.read_text()
    assert f"redis redis://:***@127.0.0.1:{closed}/0?password=***" in log
    assert f"forwarding http://hook:***@127.0.0.1:{closed}/hooks?token=***" in log
    assert f"nats nats://nats:***@127.0.0.1:{closed}" in log
    assert f"spans http://otlp:***@127.0.0.1:{closed}?auth=***" in log
    assert "-pw-" not in log


@pytest.mark.parametrize("formatter", [JsonFormatter(), ConsoleFormatter()], ids=["json", "console"])
def test_a_log_line_quoting_a_url_is_masked_whoever_wrote_it(formatter: logging.Formatter) -> None:
    """A library's line (a driver's error, an exporter's traceback) may quote a configured URL: the
    gateway's log handler masks every password of the configured URLs in every line it writes."""
    urls = ('postgresql://gw:pw-"1@db/gw', "http://otlp:4318/v1/traces?token=pw-2")
    stream = io.StringIO()
    handler = BatchingHandler(stream, url_secrets(*urls))
    handler.setFormatter(formatter)
    handler.start()
    try:
        raise ConnectionError(f"cannot reach {urls[1]}")
    except ConnectionError:
        record = logging.LogRecord("exporter", logging.ERROR, __file__, 1, "export to %s failed", (urls[0],), None)
        record.exc_info = sys.exc_info()
    handler.emit(record)
    handler.stop()
    written = stream.getvalue()
    assert "export to postgresql://gw:***@db/gw failed" in written
    assert "?token=***" in written
    assert "pw-" not in written
