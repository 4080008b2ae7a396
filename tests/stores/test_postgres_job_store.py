"""What only the PostgreSQL job store does: replicas racing on one database, batches behind another
replica's lock, event ids visible in order, an unreachable server; on a real PostgreSQL. The contract
every job store keeps is test_job_store_contract.py."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from gateway.model import Outcome, Status
from gateway.stores.base import StoreUnavailable
from tests.backends import postgres_job_store
from tests.conftest import free_port
from tests.stores.test_job_store_contract import T0, event


async def test_postgresql_replicas_racing_on_the_same_new_jobs_record_each_event_once(database_url: str) -> None:
    """Two replicas get the same events of jobs neither has seen, at the same moment: each replica batches
    them, both batches try to create the jobs, and whichever loses decides its batch again against what
    the other committed. Every event is recorded once, by one replica; the other answers duplicate."""
    replicas = [postgres_job_store(database_url, pool_size=4) for _ in range(2)]
    for replica in replicas:
        await replica.open()
    try:
        statuses = [Status.PENDING, Status.GENERATING, Status.COMPLETED]
        for attempt in range(5):
            events = [
                event(status, minute, job_id=f"race-{attempt}-{n}")
                for n in range(20)
                for minute, status in enumerate(statuses)
            ]
            answers = await asyncio.gather(*(replica.apply(e) for e in events for replica in replicas))
            pairs = [answers[i : i + 2] for i in range(0, len(answers), 2)]
            assert all(sorted(a.outcome is Outcome.DUPLICATE for a in pair) == [False, True] for pair in pairs)
            for n in range(20):
                job = await replicas[0].get(f"race-{attempt}-{n}")
                assert job is not None
                assert job.status is Status.COMPLETED
                assert [e.status for e in job.history] == statuses
    finally:
        for replica in replicas:
            await replica.close()


async def test_an_unreachable_postgresql_is_store_unavailable_within_the_timeout() -> None:
    store = postgres_job_store(f"postgresql://postgres@127.0.0.1:{free_port()}/none", timeout=0.5)
    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.open(apply_migrations=False)  # the pool connects on demand
    started = asyncio.get_running_loop().time()
    for call in (store.ping(), store.apply(event(Status.PENDING)), store.get("j1")):
        with pytest.raises(StoreUnavailable):
            await call
    assert asyncio.get_running_loop().time() - started < 3
    await store.close()


async def test_postgresql_events_become_visible_in_id_order(database_url: str) -> None:
    """A live stream reads events by id: an event must never be visible before one with a smaller id is,
    or a stream that has read past it would skip that one for good (found in review on PostgreSQL, where
    two transactions can take ids in one order and commit in the other)."""
    import asyncpg

    from gateway.stores.postgres_batch import EVENTS_LOCK

    store = postgres_job_store(database_url, pool_size=4)
    await store.open()
    writer = await asyncpg.connect(database_url)
    try:
        await store.apply(event(Status.PENDING, job_id="slow"))
        before = await store.last_event_id()
        transaction = writer.transaction()
        await transaction.start()
        # Another replica's batch holds the events lock; this store's batch starts meanwhile, and only
        # then does the other take its id and commit: the store's batch must not have taken one first.
        await writer.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
        fast = asyncio.create_task(store.apply(event(Status.PENDING, job_id="fast")))
        await asyncio.sleep(0.3)
        assert not fast.done(), "an event was recorded while another replica held the events lock"
        slow_id = await writer.fetchval(
            "INSERT INTO job_events (job_id, status, timestamp, received_at, outcome, event_key)"
            " VALUES ('slow', 'generating', $1, $2, 'applied', 'slow:key') RETURNING id",
            T0,
            datetime.now(UTC),
        )
        assert [e.id for e in await store.events_after(before, 10)] == []
        await transaction.commit()
        fast_id = (await fast).event_id
        assert fast_id is not None
        assert slow_id < fast_id, "the batch took its id before the lock: a larger id could be seen first"
        assert [e.id for e in await store.events_after(before, 10)] == [slow_id, fast_id]
    finally:
        await writer.close()
        await store.close()


async def test_postgresql_events_queued_behind_a_stuck_batch_are_refused_within_the_timeout(
    database_url: str,
) -> None:
    """Another replica holds the events lock: every event queued here, however many, is refused (503) within
    the store's timeout of its arrival, as any store call is, and the ones that arrive once the lock is
    free are written; a close() given up on by its caller still answers everyone."""
    import asyncpg

    from gateway.stores.postgres_batch import EVENTS_LOCK

    store = postgres_job_store(database_url, pool_size=4, timeout=0.3)
    await store.open()
    holder = await asyncpg.connect(database_url)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
    waited: list[float] = []

    async def apply(job_id: str) -> object:
        started = time.monotonic()
        try:
            return await store.apply(event(Status.PENDING, job_id=job_id))
        except StoreUnavailable as refused:
            return refused
        finally:
            waited.append(time.monotonic() - started)

    try:
        answers = await asyncio.gather(*(apply(f"stuck-{n}") for n in range(1200)))
        assert all(isinstance(answer, StoreUnavailable) for answer in answers)
        # 1200 events are five batches: waiting for the batches ahead took up to five timeouts.
        assert max(waited) < 0.9
        late = [asyncio.create_task(apply(f"late-{n}")) for n in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.close(), 0.05)
    finally:
        await transaction.rollback()
        await holder.close()
    done, _ = await asyncio.wait(late, timeout=2)
    assert len(done) == 3, "a caller was left waiting when close() was given up on"
    await store.close()
