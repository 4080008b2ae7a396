"""Retention on both job stores: finished jobs older than GATEWAY_RETENTION_DAYS go, with their history, in
batches; jobs still running and recent ones stay; the app runs it by itself and counts what it deleted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from gateway.config import ConfigError, PostgresDatabase, Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.model import JobEvent, Status
from gateway.retention import Retention
from gateway.stores.base import JobStore, StoreUnavailable
from gateway.stores.postgres import PostgresJobStore
from gateway.stores.sqlite import SqliteJobStore
from gateway.telemetry.metrics import Metrics, ModelLabels
from tests.backends import postgres_job_store, sqlite_job_store
from tests.conftest import SECRET

NOW = datetime.now(UTC)


def event(job_id: str, status: Status, days_ago: float, minute: int = 0) -> JobEvent:
    received = NOW - timedelta(days=days_ago)
    return JobEvent(
        kind="image",
        job_id=job_id,
        status=status,
        timestamp=received + timedelta(minutes=minute),
        received_at=received,
        error_message="boom" if status is Status.FAILED else None,
    )


async def seed(store: JobStore) -> None:
    """Old finished jobs (with history), an old job still running, and a recent finished job."""
    for number in range(7):
        await store.apply(event(f"old-{number}", Status.PENDING, days_ago=40))
        await store.apply(event(f"old-{number}", Status.GENERATING, days_ago=40, minute=1))
        final = Status.COMPLETED if number % 2 else Status.FAILED
        await store.apply(event(f"old-{number}", final, days_ago=31, minute=2))
    await store.apply(event("old-running", Status.GENERATING, days_ago=60))
    await store.apply(event("recent", Status.PENDING, days_ago=40))
    await store.apply(event("recent", Status.COMPLETED, days_ago=29, minute=1))


def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), ("image",), ModelLabels())


@pytest.fixture
def jobs(job_store: JobStore) -> JobStore:
    """Every job store backend (tests/backends.py)."""
    return job_store


async def test_finished_jobs_older_than_the_retention_go_in_batches(jobs: JobStore) -> None:
    await seed(jobs)
    counted = metrics()
    failures: list[StoreUnavailable] = []
    retention = Retention(30, [("jobs", jobs.prune_finished)], counted.retention_pruned, failures.append, batch_size=3)

    assert await retention.run_once(NOW) == {"jobs": 7}  # batches of 3, 3 and 1
    for number in range(7):
        assert await jobs.get(f"old-{number}") is None
    running = await jobs.get("old-running")
    assert running is not None
    assert running.status is Status.GENERATING
    recent = await jobs.get("recent")
    assert recent is not None
    assert len(recent.history) == 2
    assert counted.retention_pruned.labels("jobs")._value.get() == 7
    assert await retention.run_once(NOW) == {"jobs": 0}
    assert not failures


async def test_a_late_event_of_a_pruned_job_starts_it_afresh(jobs: JobStore) -> None:
    """Pruned means forgotten: why GATEWAY_RETENTION_DAYS must cover the senders' retry horizon."""
    await seed(jobs)
    await jobs.prune_finished(NOW - timedelta(days=30), 100)
    applied = await jobs.apply(event("old-1", Status.COMPLETED, days_ago=31, minute=2))
    assert applied.outcome == "applied"
    job = await jobs.get("old-1")
    assert job is not None
    assert len(job.history) == 1


async def test_a_failing_store_is_counted_and_retention_carries_on(tmp_path: Path) -> None:
    store = sqlite_job_store(tmp_path / "jobs.db")
    await store.open()
    await store.close()  # a closed store refuses every call
    failures: list[StoreUnavailable] = []
    retention = Retention(30, [("jobs", store.prune_finished)], metrics().retention_pruned, failures.append)
    assert await retention.run_once(NOW) == {"jobs": 0}
    assert [failure.operation for failure in failures] == ["prune"]


@pytest.mark.parametrize("family", ["embedded", "distributed"])
async def test_the_app_prunes_at_start_up_and_counts_it(
    request: pytest.FixtureRequest, tmp_path: Path, family: str
) -> None:
    store: SqliteJobStore | PostgresJobStore
    if family == "embedded":
        path = str(tmp_path / "gateway.db")
        settings = Settings(webhook_secret=SECRET, database=SqliteDatabase(path), retention_days=30)
        store = sqlite_job_store(path)
    else:
        url = request.getfixturevalue("database_url")
        settings = Settings(webhook_secret=SECRET, database=PostgresDatabase(url), retention_days=30)
        store = postgres_job_store(url)
    await store.open()
    await seed(store)
    await store.close()

    async with AsyncTestClient(app=create_app(settings)) as client:
        for _ in range(100):
            if (await client.get("/api/jobs/old-0")).status_code == 404:
                break
            await asyncio.sleep(0.05)
        assert (await client.get("/api/jobs/old-0")).status_code == 404
        assert (await client.get("/api/jobs/recent")).status_code == 200
        assert (await client.get("/api/jobs/old-running")).status_code == 200
        assert 'gateway_retention_pruned_total{target="jobs"} 7.0' in (await client.get("/metrics")).text


def test_retention_must_cover_the_senders_retry_horizon() -> None:
    assert Settings.from_env({}).retention_days is None
    assert Settings.from_env({"GATEWAY_RETENTION_DAYS": "30"}).retention_days == 30
    with pytest.raises(ConfigError, match="GATEWAY_RETENTION_DAYS=2 is shorter than GATEWAY_IDEMPOTENCY_TTL_SECONDS"):
        Settings.from_env({"GATEWAY_RETENTION_DAYS": "2"})
    assert (
        Settings.from_env({"GATEWAY_RETENTION_DAYS": "1", "GATEWAY_IDEMPOTENCY_TTL_SECONDS": "3600"}).retention_days
        == 1
    )
    with pytest.raises(ConfigError, match="GATEWAY_RETENTION_DAYS must be"):
        Settings.from_env({"GATEWAY_RETENTION_DAYS": "0"})
