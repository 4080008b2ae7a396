"""One contract for every job store (SQLite, PostgreSQL) and every idempotency store (memory, Redis),
run against real servers: what the pipeline relies on, whichever backend it was given."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.model import JobEvent, KindConflict, Outcome, Status
from gateway.payloads import Metadata
from gateway.stores.base import IdempotencyStore, JobStore, StoreUnavailable
from gateway.stores.memory import MemoryIdempotencyStore
from gateway.stores.postgres import PostgresJobStore
from gateway.stores.redis import RedisIdempotencyStore
from gateway.stores.sqlite import SqliteJobStore
from tests.conftest import free_port

T0 = datetime(2025, 10, 21, 16, 40, tzinfo=UTC)


def event(
    status: Status, minute: int = 0, *, job_id: str = "j1", kind: str = "image", delivery_id: str | None = None
) -> JobEvent:
    return JobEvent(
        kind=kind,
        job_id=job_id,
        status=status,
        timestamp=T0 + timedelta(minutes=minute),
        received_at=datetime.now(UTC),
        delivery_id=delivery_id,
        metadata=Metadata(model_name="gemini") if status is Status.GENERATING else None,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    store: SqliteJobStore | PostgresJobStore
    if request.param == "sqlite":
        store = SqliteJobStore(str(tmp_path / "jobs.db"))
    else:
        store = PostgresJobStore(request.getfixturevalue("database_url"), pool_size=20)
    await store.open()
    yield store
    await store.close()


@pytest.fixture(params=["memory", "redis"])
async def idempotency(request: pytest.FixtureRequest) -> AsyncIterator[IdempotencyStore]:
    store: IdempotencyStore
    if request.param == "memory":
        store = MemoryIdempotencyStore(ttl_seconds=60, max_keys=1000)
    else:
        store = RedisIdempotencyStore(
            request.getfixturevalue("redis_url"), ttl_seconds=60, prefix=request.getfixturevalue("redis_prefix")
        )
    yield store
    await store.close()


async def test_applied_answers_carry_the_same_fields_on_every_backend(jobs: JobStore) -> None:
    created = await jobs.apply(event(Status.GENERATING, 1))
    assert (created.outcome, created.status, created.previous, created.moved) == (
        Outcome.APPLIED,
        Status.GENERATING,
        None,
        True,
    )
    assert created.model == "gemini"
    assert created.first_seen_at is not None
    done = await jobs.apply(event(Status.COMPLETED, 3))
    assert (done.outcome, done.status, done.previous, done.moved, done.model) == (
        Outcome.APPLIED,
        Status.COMPLETED,
        Status.GENERATING,
        True,
        "gemini",
    )
    assert done.first_seen_at == created.first_seen_at
    assert done.event_id is not None
    assert created.event_id is not None
    assert done.event_id > created.event_id
    stale = await jobs.apply(event(Status.SAVING, 2))
    assert (stale.outcome, stale.status, stale.moved) == (Outcome.STALE, Status.COMPLETED, False)
    again = await jobs.apply(event(Status.COMPLETED, 3))
    assert (again.outcome, again.status, again.event_id) == (Outcome.DUPLICATE, Status.COMPLETED, None)
    job = await jobs.get("j1")
    assert job is not None
    assert [(entry.status, entry.outcome) for entry in job.history] == [
        (Status.GENERATING, Outcome.APPLIED),
        (Status.COMPLETED, Outcome.APPLIED),
        (Status.SAVING, Outcome.STALE),
    ]
    assert job.completed_at is not None
    assert job.history[0].timestamp == T0 + timedelta(minutes=1)


async def test_a_delivery_id_seen_before_is_a_duplicate_and_a_kind_conflict_is_refused(jobs: JobStore) -> None:
    await jobs.apply(event(Status.PENDING, delivery_id="msg_1"))
    assert (await jobs.apply(event(Status.SAVING, 5, delivery_id="msg_1"))).outcome is Outcome.DUPLICATE
    with pytest.raises(KindConflict):
        await jobs.apply(event(Status.SAVING, 6, kind="blog"))
    assert await jobs.status_of("j1") is Status.PENDING


async def test_recorded_confirms_only_events_the_store_holds(jobs: JobStore) -> None:
    assert await jobs.recorded(event(Status.PENDING)) is None
    await jobs.apply(event(Status.PENDING, delivery_id="msg_1"))
    assert await jobs.recorded(event(Status.PENDING)) is Status.PENDING
    assert await jobs.recorded(event(Status.SAVING, 9, delivery_id="msg_1")) is Status.PENDING
    assert await jobs.recorded(event(Status.SAVING, 9)) is None


async def test_concurrent_shuffled_events_of_one_job_apply_once_each_and_never_move_back(jobs: JobStore) -> None:
    """Forty copies of each of six events, all at once and shuffled: the store alone serialises them."""
    statuses = [Status.PENDING, Status.INITIALIZING, Status.GENERATING, Status.SAVING, Status.COMPLETED]
    events = [event(status, minute) for minute, status in enumerate(statuses)] + [event(Status.GENERATING, 9)]
    copies = [e for e in events for _ in range(40)]
    random.Random(6).shuffle(copies)
    answers = await asyncio.gather(*(jobs.apply(e) for e in copies))
    recorded = [a for a in answers if a.outcome is not Outcome.DUPLICATE]
    assert len(recorded) == len(events)
    assert (await jobs.status_of("j1")) is Status.COMPLETED
    job = await jobs.get("j1")
    assert job is not None
    assert len(job.history) == len(events)
    applied_ranks = [e.status.rank for e in job.history if e.outcome is Outcome.APPLIED]
    assert applied_ranks == sorted(applied_ranks)


async def test_events_of_a_new_job_arriving_together_leave_the_job_as_one_by_one_would(jobs: JobStore) -> None:
    """Events arriving at once are written together (PostgreSQL batches them, SQLite shares a transaction):
    a job created, completed with its result, then a late stale event, all in one go, ends as if each had
    been written alone."""
    result = msgspec.Raw(b'{"images":[]}')
    late = [
        event(Status.GENERATING, 1, job_id="together"),
        msgspec.structs.replace(event(Status.COMPLETED, 3, job_id="together"), result=result),
        event(Status.SAVING, 2, job_id="together"),
        event(Status.GENERATING, 1, job_id="together"),  # a copy of the first
    ]
    answers = await asyncio.gather(*(jobs.apply(e) for e in late))
    assert [(a.outcome, a.status, a.previous) for a in answers] == [
        (Outcome.APPLIED, Status.GENERATING, None),
        (Outcome.APPLIED, Status.COMPLETED, Status.GENERATING),
        (Outcome.STALE, Status.COMPLETED, Status.COMPLETED),
        (Outcome.DUPLICATE, Status.COMPLETED, None),
    ]
    assert [a.model for a in answers[:3]] == ["gemini"] * 3
    ids = [a.event_id for a in answers[:3]]
    assert ids == sorted(ids)
    job = await jobs.get("together")
    assert job is not None
    assert (job.status, job.result, job.metadata) == (Status.COMPLETED, result, Metadata(model_name="gemini"))
    assert job.completed_at is not None
    assert job.created_at == answers[0].first_seen_at == answers[2].first_seen_at
    assert [(e.status, e.outcome) for e in job.history] == [
        (Status.GENERATING, Outcome.APPLIED),
        (Status.COMPLETED, Outcome.APPLIED),
        (Status.SAVING, Outcome.STALE),
    ]


async def test_a_refused_event_among_many_written_together_refuses_only_itself(jobs: JobStore) -> None:
    await jobs.apply(event(Status.PENDING, job_id="an-image"))
    others = [event(Status.PENDING, job_id=f"other-{n}") for n in range(10)]
    answers = await asyncio.gather(
        *(jobs.apply(e) for e in others[:5]),
        jobs.apply(event(Status.GENERATING, 1, job_id="an-image", kind="blog")),
        *(jobs.apply(e) for e in others[5:]),
        return_exceptions=True,
    )
    assert isinstance(answers[5], KindConflict)
    assert [a.outcome for a in answers if not isinstance(a, BaseException)] == [Outcome.APPLIED] * 10
    assert await jobs.status_of("an-image") is Status.PENDING
    assert [await jobs.status_of(e.job_id) for e in others] == [Status.PENDING] * 10


async def test_postgresql_replicas_racing_on_the_same_new_jobs_record_each_event_once(database_url: str) -> None:
    """Two replicas get the same events of jobs neither has seen, at the same moment: each replica batches
    them, both batches try to create the jobs, and whichever loses decides its batch again against what
    the other committed. Every event is recorded once, by one replica; the other answers duplicate."""
    replicas = [PostgresJobStore(database_url, pool_size=4) for _ in range(2)]
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
    store = PostgresJobStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", timeout=0.5)
    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.open(apply_migrations=False)  # the pool connects on demand
    started = asyncio.get_running_loop().time()
    for call in (store.ping(), store.apply(event(Status.PENDING)), store.get("j1")):
        with pytest.raises(StoreUnavailable):
            await call
    assert asyncio.get_running_loop().time() - started < 3
    await store.close()


async def test_one_of_many_concurrent_claims_wins(idempotency: IdempotencyStore) -> None:
    wins = await asyncio.gather(*(idempotency.claim(["event:a", "delivery:1"]) for _ in range(50)))
    assert wins.count(True) == 1


async def test_any_known_key_fails_the_claim_and_remembers_nothing_new(idempotency: IdempotencyStore) -> None:
    assert await idempotency.claim(["delivery:1"])
    assert not await idempotency.claim(["event:b", "delivery:1"])
    assert await idempotency.claim(["event:b"])


async def test_a_released_claim_can_be_claimed_again(idempotency: IdempotencyStore) -> None:
    assert await idempotency.claim(["event:a", "delivery:1"])
    await idempotency.release(["event:a", "delivery:1"])
    assert await idempotency.claim(["event:a", "delivery:1"])


async def test_count_reports_the_keys_claimed(idempotency: IdempotencyStore) -> None:
    for number in range(5):
        assert await idempotency.claim([f"event:{number}", f"delivery:{number}"])
    await idempotency.release(["event:4", "delivery:4"])
    assert await idempotency.count() == 8


async def test_count_includes_the_keys_noted_without_a_claim(idempotency: IdempotencyStore) -> None:
    """With a job store that decides duplicates itself nothing is claimed: the deliveries it recorded are
    noted, and counted beside the claims (Redis adds a second's notes in one round trip)."""
    assert await idempotency.claim(["event:0", "delivery:0"])
    for number in range(1, 4):
        idempotency.note([f"event:{number}", f"delivery:{number}"])
    async with asyncio.timeout(10):
        while await idempotency.count() != 8:
            await asyncio.sleep(0.1)


async def test_redis_keys_expire_after_the_ttl(redis_url: str, redis_prefix: str) -> None:
    store = RedisIdempotencyStore(redis_url, ttl_seconds=1, prefix=redis_prefix)
    try:
        assert await store.claim(["event:a"])
        assert not await store.claim(["event:a"])
        await asyncio.sleep(1.1)
        assert await store.claim(["event:a"])
    finally:
        await store.close()


async def test_an_unreachable_redis_is_store_unavailable_within_the_timeout() -> None:
    store = RedisIdempotencyStore(f"redis://127.0.0.1:{free_port()}/0", ttl_seconds=60, timeout=0.25)
    for call in (store.claim(["event:a"]), store.release(["event:a"]), store.count(), store.ping()):
        with pytest.raises(StoreUnavailable):
            await call
    await store.close()


async def test_a_sqlite_store_reopened_after_close_answers_reads(tmp_path: Path) -> None:
    """Found by schemathesis (its ASGI client runs the app's lifespan around every call): reads after a
    close and a reopen failed with a 500 (the reader thread's executor was shut down for good)."""
    store = SqliteJobStore(str(tmp_path / "jobs.db"))
    await store.open()
    await store.apply(event(Status.PENDING))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get("j1")
    await store.open()
    try:
        job = await store.get("j1")
        assert job is not None
        assert job.status is Status.PENDING
    finally:
        await store.close()


async def test_a_stuck_sqlite_writer_answers_its_callers_503_at_their_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread stuck on a batch (a disk stall): the callers waiting on it, and those queued
    behind it, are answered 503 once their deadline passes, not left hanging; the store then goes on."""
    from gateway.stores import sqlite_executor

    monkeypatch.setattr(sqlite_executor, "_CALL_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(sqlite_executor, "_WATCH_SECONDS", 0.05)
    store = SqliteJobStore(str(tmp_path / "jobs.db"))
    await store.open()
    try:
        started = time.monotonic()
        stuck = asyncio.create_task(store.executor.run("stall", lambda db: time.sleep(1.0)))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(store.apply(event(Status.PENDING, job_id="behind-a-stall")))
        for call in (stuck, queued):
            with pytest.raises(StoreUnavailable):
                await call
        assert time.monotonic() - started < 0.9, "answered only when the stall ended"
        await asyncio.sleep(1.0)  # the stall ends; the queued write ran after it (its sender's retry: duplicate)
        assert (await store.apply(event(Status.GENERATING, 1, job_id="after"))).outcome is Outcome.APPLIED
    finally:
        await store.close()


async def test_a_cancelled_write_still_queued_at_close_is_answered(tmp_path: Path) -> None:
    """Graceful shutdown: the server cancels a request whose write is queued behind a slow batch, then closes
    the store. The request still waits for the truth about its write, so close() must answer it (503:
    not written), or the process would never exit."""
    store = SqliteJobStore(str(tmp_path / "jobs.db"))
    await store.open()
    slow = asyncio.create_task(store.executor.run("slow batch", lambda db: time.sleep(0.3)))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(store.apply(event(Status.PENDING, job_id="queued")))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.sleep(0.01)
    await store.close()
    await slow
    done, _ = await asyncio.wait([queued], timeout=2)
    assert done, "the cancelled write's caller was left waiting after close()"
    assert isinstance(queued.exception(), StoreUnavailable)


async def test_a_write_answered_as_its_caller_is_cancelled_keeps_that_answer(tmp_path: Path) -> None:
    """The writer's answer and a cancellation can reach a caller in the same pass of the event loop: the
    answer stands (the write is committed), and the caller does not wait for another that never comes."""
    store = SqliteJobStore(str(tmp_path / "jobs.db"))
    await store.open()
    try:
        settle = store.executor._settle
        task: asyncio.Task[object] | None = None

        def settle_then_cancel(settled: list[Any]) -> None:
            settle(settled)
            if task is not None and not task.done():
                task.cancel()

        store.executor._settle = settle_then_cancel  # type: ignore[method-assign]
        task = asyncio.create_task(store.apply(event(Status.PENDING, job_id="raced")))
        done, _ = await asyncio.wait([task], timeout=2)
        store.executor._settle = settle  # type: ignore[method-assign]
        assert done, "the caller waited for an answer already given"
        assert task.result().outcome is Outcome.APPLIED  # type: ignore[attr-defined]
    finally:
        await store.close()


def test_a_sqlite_store_reopened_on_another_event_loop_still_answers_stuck_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One store, two event loops in turn (a second test client, a restarted app): deadlines still hold on
    the second loop."""
    from gateway.stores import sqlite_executor

    monkeypatch.setattr(sqlite_executor, "_CALL_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(sqlite_executor, "_WATCH_SECONDS", 0.05)
    store = SqliteJobStore(str(tmp_path / "jobs.db"))

    async def first() -> None:
        await store.open()
        await store.ping()
        await store.close()

    async def second() -> None:
        await store.open()
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.executor.run("stall", lambda db: time.sleep(1.0)), 0.9)
        finally:
            await store.close()

    asyncio.run(first())
    asyncio.run(second())


async def test_postgresql_events_become_visible_in_id_order(database_url: str) -> None:
    """A live stream reads events by id: an event must never be visible before one with a smaller id is,
    or a stream that has read past it would skip that one for good (found in review on PostgreSQL, where
    two transactions can take ids in one order and commit in the other)."""
    import asyncpg

    from gateway.stores.postgres_batch import EVENTS_LOCK

    store = PostgresJobStore(database_url, pool_size=4)
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

    store = PostgresJobStore(database_url, pool_size=4, timeout=0.3)
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


async def test_an_apply_whose_caller_is_cancelled_still_answers_what_it_recorded(
    jobs: JobStore, request: pytest.FixtureRequest
) -> None:
    """The shutdown deadline cancels requests; a write already under way finishes and its caller gets the
    truthful answer, so a 503 never stands for a recorded event."""
    release: Callable[[], Awaitable[object]]
    if isinstance(jobs, SqliteJobStore):  # keep the writer thread busy, so the cancel lands mid-wait
        busy = asyncio.create_task(jobs.executor.run("hold", lambda db: time.sleep(0.2)))
        release = lambda: busy  # noqa: E731
    else:  # hold the events lock, so the write waits on its connection
        import asyncpg

        from gateway.stores.postgres_batch import EVENTS_LOCK

        holder = await asyncpg.connect(request.getfixturevalue("database_url"))
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)

        async def release() -> None:
            await transaction.commit()
            await holder.close()

    await asyncio.sleep(0.05)
    writing = asyncio.create_task(jobs.apply(event(Status.PENDING, job_id="cut-off")))
    await asyncio.sleep(0.05)
    assert not writing.done()
    writing.cancel()
    await asyncio.sleep(0.05)
    await release()
    applied = await writing
    assert applied.outcome is Outcome.APPLIED
    assert not writing.cancelled()
    assert await jobs.status_of("cut-off") is Status.PENDING
