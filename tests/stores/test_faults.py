"""Fault injection on real stores: PostgreSQL and Redis behind a TCP proxy that adds latency, drops the
connections or blackholes them; SQLite locked by another process.

Whatever the fault, the gateway answers every webhook within a bounded time: 200 once recorded, or 503
with ``Retry-After`` and nothing recorded (a Redis fault refuses none: PostgreSQL decides duplicates);
the event loop keeps turning (a ticker measures its lag); and once the store is back, resending the
refused webhooks records each exactly once, as are the ones acknowledged before.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import PostgresDatabase, Settings, SqliteDatabase
from gateway.http.app import create_app
from tests.conftest import SECRET
from tests.traffic import IMAGE, FaultyProxy, host_port, recorded_events, through, webhook_body

STORE_TIMEOUT = 0.5
BOUND = STORE_TIMEOUT * 2 + 1.0
"""Longest a webhook may wait for its answer during a fault: a claim and a write, each within the store
timeout, plus slack for a shared 2-core machine."""
MAX_LAG = 0.25


class LoopLag:
    """A ticker on the event loop: the longest it was kept waiting past its 10 ms sleep."""

    def __init__(self) -> None:
        self.worst = 0.0

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[LoopLag]:
        async def tick() -> None:
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                self.worst = max(self.worst, time.monotonic() - before - 0.01)

        ticker = asyncio.create_task(tick())
        try:
            yield self
        finally:
            ticker.cancel()


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and a client whose requests really run concurrently on this loop
    (Litestar's test client handles one request at a time)."""
    app = create_app(settings)
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"X-Webhook-Secret": SECRET},
            timeout=30,
        ) as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan


async def send(client: httpx.AsyncClient, job_ids: list[str]) -> dict[str, tuple[int, str | None, float]]:
    """Post one webhook per job id, all at once; each one's status code, ``Retry-After`` and latency."""

    async def one(job_id: str) -> tuple[str, tuple[int, str | None, float]]:
        started = time.monotonic()
        response = await client.post(IMAGE, content=webhook_body(job_id), headers={"Content-Type": "application/json"})
        return job_id, (response.status_code, response.headers.get("retry-after"), time.monotonic() - started)

    return dict(await asyncio.gather(*(one(job_id) for job_id in job_ids)))


@contextlib.contextmanager
def proxies(database_url: str, redis_url: str) -> Iterator[tuple[FaultyProxy, FaultyProxy]]:
    postgres, redis = FaultyProxy(*host_port(database_url)), FaultyProxy(*host_port(redis_url))
    try:
        yield postgres, redis
    finally:
        postgres.close()
        redis.close()


FAULTS = {
    "postgresql-blackholed": ("postgres", FaultyProxy.blackhole),
    "postgresql-dropped": ("postgres", FaultyProxy.drop),
    "redis-blackholed": ("redis", FaultyProxy.blackhole),
    "redis-dropped": ("redis", FaultyProxy.drop),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failing_shared_store_sheds_with_503_in_bounded_time_and_loses_nothing(
    fault: str, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    with proxies(database_url, redis_url) as (postgres, redis):
        settings = Settings(
            webhook_secret=SECRET,
            database=PostgresDatabase(through(database_url, postgres)),
            redis_url=through(redis_url, redis),
            redis_key_prefix=redis_prefix,
            store_timeout_seconds=STORE_TIMEOUT,
        )
        target, inject = FAULTS[fault]
        proxy = postgres if target == "postgres" else redis
        async with serving(settings) as client:
            before = await send(client, [f"{fault}-ok-{n}" for n in range(20)])
            assert {code for code, _, _ in before.values()} == {200}

            inject(proxy)
            async with LoopLag().watching() as lag:
                during = await send(client, [f"{fault}-down-{n}" for n in range(20)])
                ready = await client.get("/readyz")
            if target == "redis":
                # PostgreSQL's batch decides duplicates: a webhook makes no round trip to Redis, so a Redis
                # fault refuses none (readiness still names Redis: rate limits and live streams use it).
                assert {code for code, _, _ in during.values()} == {200}, during
            else:
                assert {code for code, _, _ in during.values()} == {503}, during
                assert {retry for _, retry, _ in during.values()} == {"5"}
            slowest = max(latency for _, _, latency in during.values())
            assert slowest < BOUND, f"a webhook waited {slowest:.2f} s for its 503"
            assert lag.worst < MAX_LAG, f"the event loop stalled for {lag.worst:.3f} s"
            # Readiness names the failing store; Redis down takes no replica out of rotation, since
            # webhooks still succeed without it.
            assert ready.status_code == (200 if target == "redis" else 503), ready.text
            assert ready.json()["stores"][{"postgres": "jobs", "redis": "idempotency"}[target]] != "ok"

            proxy.heal()
            deadline = time.monotonic() + 10
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the gateway did not recover once the store was back"
                await asyncio.sleep(0.1)
            after = await send(client, list(during))
            assert {code for code, _, _ in after.values()} == {200}
    events = await asyncio.to_thread(recorded_events, database_url, fault)
    assert set(events) == set(before) | set(during)
    assert set(events.values()) == {1}


async def test_slow_stores_answer_within_their_timeout(database_url: str, redis_url: str, redis_prefix: str) -> None:
    """30 ms added each way to every PostgreSQL and Redis round trip (a slow network, 60 ms a round trip):
    slower answers, all of them 200, loop fluid. The events arriving while a batch is written share the
    next one (see gateway/stores/postgres_batch.py); when each event was a transaction of its own, holding
    the events lock for two round trips, the 30th webhook here waited past the 2 s store timeout."""
    with proxies(database_url, redis_url) as (postgres, redis):
        settings = Settings(
            webhook_secret=SECRET,
            database=PostgresDatabase(through(database_url, postgres)),
            redis_url=through(redis_url, redis),
            redis_key_prefix=redis_prefix,
            store_timeout_seconds=2,
        )
        async with serving(settings) as client:
            postgres.latency = redis.latency = 0.03
            async with LoopLag().watching() as lag:
                answers = await send(client, [f"slow-{n}" for n in range(30)])
    assert {code for code, _, _ in answers.values()} == {200}
    assert lag.worst < MAX_LAG
    events = await asyncio.to_thread(recorded_events, database_url, "slow")
    assert set(events) == set(answers)
    assert set(events.values()) == {1}


async def test_a_locked_sqlite_database_sheds_with_503_and_recovers(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock: webhooks get 503 once the busy timeout (half a second
    here) passes, the loop keeps turning meanwhile, and the resent webhooks are recorded once the lock
    is released."""
    path = tmp_path / "gateway.db"
    busy = 0.5
    settings = Settings(webhook_secret=SECRET, database=SqliteDatabase(str(path), busy_timeout_seconds=busy))
    async with serving(settings) as client:
        assert {code for code, _, _ in (await send(client, ["locked-ok-1"])).values()} == {200}
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            async with LoopLag().watching() as lag:
                during = await send(client, [f"locked-down-{n}" for n in range(5)])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert {(code, retry) for code, retry, _ in during.values()} == {(503, "5")}
        assert max(latency for _, _, latency in during.values()) < busy + 3
        assert lag.worst < MAX_LAG
        after = await send(client, list(during))
        assert {code for code, _, _ in after.values()} == {200}
    events = recorded_events(str(path), "locked")
    assert set(events) == {"locked-ok-1", *during}
    assert set(events.values()) == {1}
