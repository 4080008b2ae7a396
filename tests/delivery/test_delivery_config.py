"""Forwarding's settings, the retry schedule, ``Retry-After``, a dead endpoint, and the CLI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.config import DEFAULT_RETRY_SCHEDULE, ConfigError, Settings
from gateway.delivery.http_sink import retry_after
from gateway.delivery.schedule import MAX_RETRY_AFTER_SECONDS, RetrySchedule
from gateway.http.app import create_app
from tests.conftest import SECRET, free_port
from tests.delivery.test_delivery import post_lifecycle, until_settled
from tests.receiver import FORWARD_KEY
from tests.test_cli import run_gateway


def test_forwarding_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "GATEWAY_FORWARD_URL": "https://app.example/hooks",
            "GATEWAY_FORWARD_SIGNING_KEY": FORWARD_KEY,
            "GATEWAY_FORWARD_TIMEOUT_SECONDS": "3.5",
            "GATEWAY_FORWARD_STATUSES": "completed, FAILED",
            "GATEWAY_FORWARD_RETRY_SCHEDULE": "1, 2.5,60",
            "GATEWAY_NATS_URL": "nats://127.0.0.1:4222",
        }
    )
    assert settings.forward_url == "https://app.example/hooks"
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.forward_signing_key is not None
    assert len(settings.forward_signing_key) == 24
    assert settings.forward_timeout_seconds == 3.5
    assert settings.forward_statuses == frozenset({"completed", "failed"})
    assert settings.forward_retry_schedule == (1.0, 2.5, 60.0)
    assert "app.example" not in repr(settings)


def test_forwarding_is_off_by_default_with_a_three_day_schedule() -> None:
    settings = Settings.from_env({})
    assert settings.forward_url is None
    assert 2.5 * 86400 < sum(DEFAULT_RETRY_SCHEDULE) < 3.5 * 86400
    assert DEFAULT_RETRY_SCHEDULE[:5] == (5, 300, 1800, 7200, 18000)  # Standard Webhooks' example


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_FORWARD_URL", "ftp://app.example/hooks"),
        ("GATEWAY_FORWARD_URL", "http://"),
        ("GATEWAY_FORWARD_URL", "http://app:notaport/x"),
        ("GATEWAY_FORWARD_SIGNING_KEY", "not-a-whsec-key"),
        ("GATEWAY_FORWARD_SIGNING_KEY", "whsec_!!!"),
        ("GATEWAY_FORWARD_SIGNING_KEY", "whsec_c2hvcnQ="),
        ("GATEWAY_FORWARD_TIMEOUT_SECONDS", "0"),
        ("GATEWAY_FORWARD_STATUSES", "completed,done"),
        ("GATEWAY_FORWARD_RETRY_SCHEDULE", "5,soon"),
        ("GATEWAY_FORWARD_RETRY_SCHEDULE", "5,-1"),
        ("GATEWAY_FORWARD_RETRY_SCHEDULE", "5,,6"),
        ("GATEWAY_NATS_URL", "http://127.0.0.1:4222"),
    ],
)
def test_a_bad_forwarding_value_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


def test_production_refuses_to_forward_unsigned() -> None:
    production = {
        "GATEWAY_ENV": "production",
        "WEBHOOK_SECRET": SECRET,
        "GATEWAY_PUBLIC_READ": "true",
        "GATEWAY_FORWARD_URL": "https://app/h",
    }
    with pytest.raises(ConfigError, match="GATEWAY_FORWARD_SIGNING_KEY"):
        Settings.from_env(production)
    assert Settings.from_env({**production, "GATEWAY_FORWARD_SIGNING_KEY": FORWARD_KEY}).forward_url == "https://app/h"


def test_the_schedule_jitters_honours_retry_after_and_runs_out() -> None:
    low = RetrySchedule((10.0, 100.0), random_unit=lambda: 0.0)
    high = RetrySchedule((10.0, 100.0), random_unit=lambda: 1.0)
    assert low.next_delay(1, None) == pytest.approx(8.0)
    assert high.next_delay(2, None) == pytest.approx(120.0)
    assert low.next_delay(1, 42.0) == 42.0
    assert low.next_delay(1, 10**9) == MAX_RETRY_AFTER_SECONDS
    assert low.next_delay(3, None) is None
    assert low.next_delay(3, 1.0) is None  # out of attempts even if the receiver asks for a retry


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("120", now=0.0) == 120.0
    assert retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert retry_after("whenever", now=0.0) is None
    assert retry_after(None, now=0.0) is None


async def test_an_endpoint_that_refuses_connections_is_retried_then_dead(settings: Settings) -> None:
    """Nothing listens at the forward URL: each attempt is a connection error, retried on the schedule,
    then dead-lettered with the reason."""
    forwarding = replace(settings, forward_url=f"http://127.0.0.1:{free_port()}/hooks", forward_retry_schedule=(0.01,))
    async with AsyncTestClient(app=create_app(forwarding)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "nobody-home", ("pending",))
        await until_settled(client)
        [row] = (await client.get("/api/deliveries")).json()["deliveries"]
        metrics = (await client.get("/metrics")).text
    assert row["state"] == "dead"
    assert row["attempts"] == 2
    assert row["last_error"] == "connection failed: ConnectionRefusedError; retry schedule exhausted after 2 attempts"
    assert 'gateway_deliveries_total{result="dead",sink="http"} 1.0' in metrics


async def test_the_cli_lists_and_replays_dead_letters(tmp_path: Path, settings: Settings) -> None:
    """``gateway deliveries list --state dead`` and ``replay --state dead`` on the configured database."""
    forwarding = replace(settings, forward_url=f"http://127.0.0.1:{free_port()}/hooks", forward_retry_schedule=())
    async with AsyncTestClient(app=create_app(forwarding)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "cli-job", ("pending", "generating"))
        await until_settled(client)
    env = {"DATABASE_URL": f"sqlite:///{settings.database.path}"}  # type: ignore[union-attr]

    listed = await asyncio.to_thread(run_gateway, tmp_path, "deliveries", "list", "--state", "dead", env=env)
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(row["job_id"], row["status"], row["state"]) for row in rows] == [
        ("cli-job", "generating", "dead"),
        ("cli-job", "pending", "dead"),
    ]
    assert rows[0]["body"]["event_id"] == rows[0]["event_id"]  # the event exactly as sent

    one = await asyncio.to_thread(run_gateway, tmp_path, "deliveries", "replay", str(rows[1]["id"]), env=env)
    assert one.returncode == 0, one.stderr
    assert f"({rows[1]['event_id']}) is pending" in one.stdout
    rest = await asyncio.to_thread(run_gateway, tmp_path, "deliveries", "replay", "--state", "dead", env=env)
    assert rest.returncode == 0, rest.stderr
    assert "1 deliveries replayed" in rest.stdout
    with sqlite3.connect(settings.database.path) as db:  # type: ignore[union-attr]
        assert db.execute("SELECT state, attempts FROM deliveries").fetchall() == [("pending", 0), ("pending", 0)]

    missing = await asyncio.to_thread(run_gateway, tmp_path, "deliveries", "replay", "999", env=env)
    assert missing.returncode == 1
    assert "no delivery with id 999" in missing.stderr
    helped = await asyncio.to_thread(run_gateway, tmp_path, "deliveries", "--help")
    assert all(action in helped.stdout for action in ("list", "replay", "enable"))
