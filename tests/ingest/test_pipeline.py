"""The ingest pipeline without HTTP: ordering properties, durability, the last guard and store failures."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from gateway.answers import WebhookRefused
from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.ingest.pipeline import Pipeline
from gateway.kinds import kind_named
from gateway.model import EventResult, JobEvent, Outcome, Status
from gateway.stores.base import IdempotencyStore, JobStore, StoreUnavailable
from gateway.stores.memory import MemoryIdempotencyStore
from gateway.stores.postgres import PostgresJobStore
from gateway.stores.redis import RedisIdempotencyStore
from gateway.stores.sqlite import SqliteJobStore
from gateway.telemetry.metrics import Metrics, ModelLabels
from gateway.telemetry.recorder import Telemetry
from tests.backends import postgres_job_store, sqlite_job_store
from tests.conftest import SECRET, completed_image, failed, free_port, progress

IMAGE = kind_named("image")
assert IMAGE is not None
HEADERS = {"content-type": "application/json", "x-webhook-secret": SECRET}
CLIENT = "192.0.2.1"


async def body(payload: Any) -> AsyncIterator[bytes]:
    yield json.dumps(payload).encode()


@pytest.fixture(params=["embedded", "distributed"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[JobStore, IdempotencyStore]]:
    """Both store families: SQLite + memory, PostgreSQL + Redis (real servers)."""
    jobs: SqliteJobStore | PostgresJobStore
    idempotency: IdempotencyStore
    if request.param == "embedded":
        jobs = sqlite_job_store(tmp_path / "pipeline.db")
        idempotency = MemoryIdempotencyStore(ttl_seconds=3600, max_keys=10_000)
    else:
        jobs = postgres_job_store(request.getfixturevalue("database_url"))
        idempotency = RedisIdempotencyStore(
            request.getfixturevalue("redis_url"), ttl_seconds=3600, prefix=request.getfixturevalue("redis_prefix")
        )
    await jobs.open()
    yield jobs, idempotency
    await jobs.close()
    await idempotency.close()


@pytest.fixture
def pipeline(stores: tuple[JobStore, IdempotencyStore]) -> Pipeline:
    telemetry = Telemetry(Metrics(CollectorRegistry(), ["image", "blog"], ModelLabels()))
    return Pipeline(Settings(webhook_secret=SECRET), *stores, telemetry)


def payload_for(status: str, job_id: str, minute: int) -> dict[str, Any]:
    timestamp = f"2025-10-21T16:{minute:02d}:00Z"
    if status == "completed":
        return completed_image(job_id=job_id, timestamp=timestamp)
    if status == "failed":
        return failed(job_id=job_id, timestamp=timestamp)
    return progress(status, job_id=job_id, timestamp=timestamp)


EVENTS = st.lists(
    st.tuples(st.sampled_from([s.value for s in Status]), st.integers(min_value=0, max_value=59)),
    min_size=1,
    max_size=12,
)
job_numbers = itertools.count()


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS)
async def test_shuffled_deliveries_never_move_a_job_backwards(
    pipeline: Pipeline, events: list[tuple[str, int]]
) -> None:
    job_id = f"job-{next(job_numbers)}"
    statuses: list[Status] = []
    first_terminal: Status | None = None
    for status, minute in events:
        accepted, _ = await pipeline.ingest(IMAGE, HEADERS, body(payload_for(status, job_id, minute)), client=CLIENT)
        statuses.append(accepted.status)
        if first_terminal is None and accepted.outcome is Outcome.APPLIED and Status(status).terminal:
            first_terminal = Status(status)
    ranks = [status.rank for status in statuses]
    assert ranks == sorted(ranks), statuses
    if first_terminal is not None:
        assert statuses[-1] is first_terminal
    else:
        assert statuses[-1].rank == max(Status(status).rank for status, _ in events)


async def test_the_core_runs_without_http(pipeline: Pipeline) -> None:
    accepted, _ = await pipeline.ingest(IMAGE, HEADERS, body(completed_image()), client=CLIENT)
    assert (accepted.status, accepted.outcome) == (Status.COMPLETED, Outcome.APPLIED)
    with pytest.raises(WebhookRefused) as refused:
        await pipeline.ingest(IMAGE, {"content-type": "application/json"}, body(completed_image()), client=CLIENT)
    assert refused.value.status_code == 401


async def test_a_nul_in_an_error_message_is_refused_alone_and_named(
    pipeline: Pipeline, stores: tuple[JobStore, IdempotencyStore]
) -> None:
    """PostgreSQL cannot store a NUL in text: such a webhook is the sender's mistake (400 naming the field),
    not a store failure answered 503 forever, nor one that fails the other webhooks written with it."""
    bad = {**failed(job_id="nul"), "error_message": "out of\u0000memory"}
    answers = await asyncio.gather(
        pipeline.ingest(IMAGE, HEADERS, body(bad), client=CLIENT),
        pipeline.ingest(IMAGE, HEADERS, body(completed_image(job_id="beside-nul")), client=CLIENT),
        return_exceptions=True,
    )
    assert isinstance(answers[0], WebhookRefused)
    assert (answers[0].status_code, answers[0].detail) == (
        400,
        "Invalid payload: NUL character (\\u0000) - at `$.error_message`",
    )
    assert not isinstance(answers[1], BaseException)
    assert answers[1][0].outcome is Outcome.APPLIED
    jobs, _ = stores
    assert await jobs.status_of("nul") is None


async def test_a_claim_left_behind_by_a_failed_write_does_not_hide_the_event(
    pipeline: Pipeline, stores: tuple[JobStore, IdempotencyStore]
) -> None:
    """The idempotency store holds the delivery's keys but the job store never recorded it (the claim could
    not be released after a failure): the sender's retry is applied, not answered "duplicate"."""
    jobs, idempotency = stores
    assert await idempotency.claim(["event:image:stuck:completed:1761065100000000"])
    accepted, _ = await pipeline.ingest(IMAGE, HEADERS, body(completed_image(job_id="stuck")), client=CLIENT)
    assert accepted.outcome is Outcome.APPLIED
    assert await jobs.status_of("stuck") is Status.COMPLETED
    again, _ = await pipeline.ingest(IMAGE, HEADERS, body(completed_image(job_id="stuck")), client=CLIENT)
    assert again.outcome is Outcome.DUPLICATE


async def test_postgresql_decides_duplicates_without_asking_redis(database_url: str) -> None:
    """PostgreSQL's batch decides every copy of a delivery itself: with Redis unreachable, webhooks are
    still applied once and their copies, sent together or later, answered ``duplicate``."""
    jobs = PostgresJobStore(database_url)
    await jobs.open()
    idempotency = RedisIdempotencyStore(f"redis://127.0.0.1:{free_port()}/0", ttl_seconds=60, timeout=0.25)
    telemetry = Telemetry(Metrics(CollectorRegistry(), ["image", "blog"], ModelLabels()))
    pipeline = Pipeline(Settings(webhook_secret=SECRET), jobs, idempotency, telemetry)
    job_id = f"no-redis-{uuid.uuid4().hex}"
    headers = {**HEADERS, "webhook-id": f"msg-{job_id}"}
    try:
        copies = await asyncio.gather(
            *(pipeline.ingest(IMAGE, headers, body(completed_image(job_id=job_id)), client=CLIENT) for _ in range(5))
        )
        later, _ = await pipeline.ingest(IMAGE, headers, body(completed_image(job_id=job_id)), client=CLIENT)
        job = await jobs.get(job_id)
    finally:
        await jobs.close()
        await idempotency.close()
    assert sorted(accepted.outcome for accepted, _ in copies) == [Outcome.APPLIED] + [Outcome.DUPLICATE] * 4
    assert (later.outcome, later.status) == (Outcome.DUPLICATE, Status.COMPLETED)
    assert job is not None
    assert len(job.history) == 1


async def test_database_catches_a_duplicate_the_memory_store_evicted(tmp_path: Path) -> None:
    settings = Settings(webhook_secret=SECRET, database=SqliteDatabase(str(tmp_path / "g.db")), idempotency_max_keys=1)
    route = "/api/webhooks/image-completion"
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        assert (await client.post(route, json=completed_image(job_id="a"))).json()["outcome"] == "applied"
        assert (await client.post(route, json=completed_image(job_id="b"))).json()["outcome"] == "applied"
        again = await client.post(route, json=completed_image(job_id="a"))
        assert again.json() == {"received": True, "job_id": "a", "status": "completed", "outcome": "duplicate"}
        assert len((await client.get("/api/jobs/a")).json()["history"]) == 1


async def test_events_survive_a_restart_and_stay_deduplicated(settings: Settings) -> None:
    route = "/api/webhooks/image-completion"
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await client.post(route, json=progress("generating"))
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        assert (await client.post(route, json=progress("generating"))).json()["outcome"] == "duplicate"
        completed = await client.post(route, json=completed_image())
        assert completed.json()["outcome"] == "applied"
        history = (await client.get(f"/api/jobs/{completed.json()['job_id']}")).json()["history"]
    assert [entry["status"] for entry in history] == ["generating", "completed"]
    assert history[0]["id"] < history[1]["id"]


async def test_event_ids_increase_globally_in_the_order_recorded(client: AsyncTestClient[Any]) -> None:
    route = "/api/webhooks/image-completion"
    sent = [("x", "generating"), ("y", "generating"), ("x", "completed"), ("y", "failed")]
    for job_id, status in sent:
        assert (await client.post(route, json=payload_for(status, job_id, 1))).json()["outcome"] == "applied"
    recorded = {
        (job_id, entry["status"]): entry["id"]
        for job_id in ("x", "y")
        for entry in (await client.get(f"/api/jobs/{job_id}")).json()["history"]
    }
    ids = [recorded[event] for event in sent]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_locked_database_answers_503_and_the_retry_applies(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout (half a second here): refuse with
    503, record nothing, and accept the sender's retry once the lock is gone (the idempotency claim was
    released)."""
    database = SqliteDatabase(str(tmp_path / "gateway.db"), busy_timeout_seconds=0.5)
    settings = Settings(webhook_secret=SECRET, database=database)
    route = "/api/webhooks/image-completion"
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        locker = sqlite3.connect(database.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            refused = await client.post(route, json=completed_image())
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert refused.status_code == 503
        assert refused.headers["Retry-After"].isdigit()
        assert (await client.get("/readyz")).status_code == 200
        retried = await client.post(route, json=completed_image())
        assert retried.json()["outcome"] == "applied"


class FailsFirstApply:
    """A job store whose first write fails after a while (a lock, a disk hiccup); then it recovers."""

    def __init__(self, inner: SqliteJobStore) -> None:
        self.inner = inner
        self.calls = 0

    async def apply(self, event: JobEvent) -> EventResult:
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.2)
            raise StoreUnavailable("job", "apply")
        return await self.inner.apply(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_copy_arriving_while_the_first_fails_is_not_acknowledged_unstored(tmp_path: Path) -> None:
    jobs = sqlite_job_store(tmp_path / "flaky.db")
    await jobs.open()
    flaky = FailsFirstApply(jobs)
    telemetry = Telemetry(Metrics(CollectorRegistry(), ["image", "blog"], ModelLabels()))
    pipeline = Pipeline(Settings(webhook_secret=SECRET), flaky, MemoryIdempotencyStore(3600, 100), telemetry)  # type: ignore[arg-type]

    async def send() -> int | str:
        try:
            accepted, _ = await pipeline.ingest(IMAGE, HEADERS, body(completed_image()), client=CLIENT)
        except WebhookRefused as rejection:
            return rejection.status_code
        return accepted.outcome.value

    first = asyncio.create_task(send())
    await asyncio.sleep(0.05)  # the second copy arrives while the first is being written
    second = asyncio.create_task(send())
    answers = [await first, await second]
    stored = await jobs.get(completed_image()["job_id"])
    await jobs.close()
    assert answers == [503, "applied"]
    assert stored is not None
    assert [entry.status for entry in stored.history] == [Status.COMPLETED]


async def test_closing_the_store_answers_every_waiting_call(tmp_path: Path) -> None:
    """Shutdown with writes still queued: each caller hears 'unavailable' (a 503), none hangs."""
    jobs = sqlite_job_store(tmp_path / "closing.db")
    await jobs.open()
    now = datetime.now(UTC)
    events = [
        JobEvent(kind="image", job_id=f"c-{n}", status=Status.PENDING, timestamp=now, received_at=now)
        for n in range(600)
    ]
    calls = [asyncio.create_task(jobs.apply(event)) for event in events]
    await asyncio.sleep(0)
    await jobs.close()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=10)
    applied = [r for r in results if isinstance(r, EventResult)]
    refused = [r for r in results if isinstance(r, StoreUnavailable)]
    assert len(applied) + len(refused) == len(events)
    assert refused  # more than one batch was queued when the store closed
    with pytest.raises(StoreUnavailable):
        await jobs.apply(events[0])
