"""The job store contract: what the pipeline, the read API, registration and the live streams rely on,
run over every backend (SQLite, PostgreSQL on a real server; tests/backends.py). Backend-specific
behaviour is in test_sqlite_job_store.py and test_postgres_job_store.py."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from gateway.model import DeliveryConflict, JobEvent, KindConflict, Outcome, Status, Unregistered
from gateway.payloads import Metadata
from gateway.registration import RegisterOutcome, Registration
from gateway.stores.base import JobStore
from gateway.stores.queries import JobQuery
from gateway.stores.sqlite import SqliteJobStore
from tests.backends import JOB_BACKENDS, job_store_of

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


async def test_applied_answers_carry_the_same_fields_on_every_backend(job_store: JobStore) -> None:
    created = await job_store.apply(event(Status.GENERATING, 1))
    assert (created.outcome, created.status, created.previous, created.moved) == (
        Outcome.APPLIED,
        Status.GENERATING,
        None,
        True,
    )
    assert created.model == "gemini"
    assert created.first_seen_at is not None
    done = await job_store.apply(event(Status.COMPLETED, 3))
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
    stale = await job_store.apply(event(Status.SAVING, 2))
    assert (stale.outcome, stale.status, stale.moved) == (Outcome.STALE, Status.COMPLETED, False)
    again = await job_store.apply(event(Status.COMPLETED, 3))
    assert (again.outcome, again.status, again.event_id) == (Outcome.DUPLICATE, Status.COMPLETED, None)
    job = await job_store.get("j1")
    assert job is not None
    assert [(entry.status, entry.outcome) for entry in job.history] == [
        (Status.GENERATING, Outcome.APPLIED),
        (Status.COMPLETED, Outcome.APPLIED),
        (Status.SAVING, Outcome.STALE),
    ]
    assert job.completed_at is not None
    assert job.history[0].timestamp == T0 + timedelta(minutes=1)


async def test_a_delivery_id_seen_before_is_a_duplicate_and_a_kind_conflict_is_refused(job_store: JobStore) -> None:
    await job_store.apply(event(Status.PENDING, delivery_id="msg_1"))
    assert (await job_store.apply(event(Status.SAVING, 5, delivery_id="msg_1"))).outcome is Outcome.DUPLICATE
    with pytest.raises(KindConflict):
        await job_store.apply(event(Status.SAVING, 6, kind="blog"))
    assert await job_store.status_of("j1") is Status.PENDING


async def test_recorded_confirms_only_events_the_store_holds(job_store: JobStore) -> None:
    assert await job_store.recorded(event(Status.PENDING)) is None
    await job_store.apply(event(Status.PENDING, delivery_id="msg_1"))
    assert await job_store.recorded(event(Status.PENDING)) is Status.PENDING
    assert await job_store.recorded(event(Status.SAVING, 9, delivery_id="msg_1")) is Status.PENDING
    assert await job_store.recorded(event(Status.SAVING, 9)) is None


async def test_concurrent_shuffled_events_of_one_job_apply_once_each_and_never_move_back(job_store: JobStore) -> None:
    """Forty copies of each of six events, all at once and shuffled: the store alone serialises them."""
    statuses = [Status.PENDING, Status.INITIALIZING, Status.GENERATING, Status.SAVING, Status.COMPLETED]
    events = [event(status, minute) for minute, status in enumerate(statuses)] + [event(Status.GENERATING, 9)]
    copies = [e for e in events for _ in range(40)]
    random.Random(6).shuffle(copies)
    answers = await asyncio.gather(*(job_store.apply(e) for e in copies))
    recorded = [a for a in answers if a.outcome is not Outcome.DUPLICATE]
    assert len(recorded) == len(events)
    assert (await job_store.status_of("j1")) is Status.COMPLETED
    job = await job_store.get("j1")
    assert job is not None
    assert len(job.history) == len(events)
    applied_ranks = [e.status.rank for e in job.history if e.outcome is Outcome.APPLIED]
    assert applied_ranks == sorted(applied_ranks)


async def test_events_of_a_new_job_arriving_together_leave_the_job_as_one_by_one_would(job_store: JobStore) -> None:
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
    answers = await asyncio.gather(*(job_store.apply(e) for e in late))
    assert [(a.outcome, a.status, a.previous) for a in answers] == [
        (Outcome.APPLIED, Status.GENERATING, None),
        (Outcome.APPLIED, Status.COMPLETED, Status.GENERATING),
        (Outcome.STALE, Status.COMPLETED, Status.COMPLETED),
        (Outcome.DUPLICATE, Status.COMPLETED, None),
    ]
    assert [a.model for a in answers[:3]] == ["gemini"] * 3
    ids = [a.event_id for a in answers[:3]]
    assert ids == sorted(ids)
    job = await job_store.get("together")
    assert job is not None
    assert (job.status, job.result, job.metadata) == (Status.COMPLETED, result, Metadata(model_name="gemini"))
    assert job.completed_at is not None
    assert job.created_at == answers[0].first_seen_at == answers[2].first_seen_at
    assert [(e.status, e.outcome) for e in job.history] == [
        (Status.GENERATING, Outcome.APPLIED),
        (Status.COMPLETED, Outcome.APPLIED),
        (Status.SAVING, Outcome.STALE),
    ]


async def test_a_refused_event_among_many_written_together_refuses_only_itself(job_store: JobStore) -> None:
    await job_store.apply(event(Status.PENDING, job_id="an-image"))
    others = [event(Status.PENDING, job_id=f"other-{n}") for n in range(10)]
    answers = await asyncio.gather(
        *(job_store.apply(e) for e in others[:5]),
        job_store.apply(event(Status.GENERATING, 1, job_id="an-image", kind="blog")),
        *(job_store.apply(e) for e in others[5:]),
        return_exceptions=True,
    )
    assert isinstance(answers[5], KindConflict)
    assert [a.outcome for a in answers if not isinstance(a, BaseException)] == [Outcome.APPLIED] * 10
    assert await job_store.status_of("an-image") is Status.PENDING
    assert [await job_store.status_of(e.job_id) for e in others] == [Status.PENDING] * 10


async def test_an_apply_whose_caller_is_cancelled_still_answers_what_it_recorded(
    job_store: JobStore, request: pytest.FixtureRequest
) -> None:
    """The shutdown deadline cancels requests; a write already under way finishes and its caller gets the
    truthful answer, so a 503 never stands for a recorded event."""
    release: Callable[[], Awaitable[object]]
    if isinstance(job_store, SqliteJobStore):  # keep the writer thread busy, so the cancel lands mid-wait
        busy = asyncio.create_task(job_store.executor.run("hold", lambda db: time.sleep(0.2)))
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
    writing = asyncio.create_task(job_store.apply(event(Status.PENDING, job_id="cut-off")))
    await asyncio.sleep(0.05)
    assert not writing.done()
    writing.cancel()
    await asyncio.sleep(0.05)
    await release()
    applied = await writing
    assert applied.outcome is Outcome.APPLIED
    assert not writing.cancelled()
    assert await job_store.status_of("cut-off") is Status.PENDING


async def test_a_delivery_id_recorded_for_another_job_is_a_conflict_naming_that_job(job_store: JobStore) -> None:
    await job_store.apply(event(Status.PENDING, job_id="first", delivery_id="msg_reused"))
    with pytest.raises(DeliveryConflict) as conflict:
        await job_store.apply(event(Status.PENDING, job_id="second", delivery_id="msg_reused"))
    assert conflict.value.job_id == "first"
    assert await job_store.status_of("second") is None


def registration(job_id: str = "reg-1", **changes: object) -> Registration:
    fields: dict[str, object] = {"job_id": job_id, "kind": "image", "user_id": "u-1", "prompt": "a red fox"}
    return Registration(**(fields | changes))  # type: ignore[arg-type]


async def test_registration_creates_then_is_unchanged_then_conflicts_naming_the_fields(job_store: JobStore) -> None:
    """Below ``POST /api/jobs``: the same body twice changes nothing; another body changes nothing either and
    names what differs; another kind is a kind conflict."""
    assert (await job_store.register(registration(), T0)).outcome is RegisterOutcome.CREATED
    assert (await job_store.register(registration(), T0 + timedelta(minutes=1))).outcome is RegisterOutcome.UNCHANGED
    conflict = await job_store.register(registration(user_id="u-2", prompt="a blue fox"), T0)
    assert (conflict.outcome, set(conflict.differs)) == (RegisterOutcome.CONFLICT, {"user_id", "prompt"})
    with pytest.raises(KindConflict):
        await job_store.register(registration(kind="blog"), T0)
    job = await job_store.get("reg-1")
    assert job is not None
    assert (job.status, job.user_id, job.registered_at, job.history) == (Status.PENDING, "u-1", T0, [])
    assert job.context is not None
    assert job.context.prompt == "a red fox"


async def test_a_registration_after_the_webhooks_attaches_its_context_to_their_job(job_store: JobStore) -> None:
    await job_store.apply(event(Status.GENERATING, 1, job_id="early"))
    attached = await job_store.register(registration("early", organization_id="org-1"), T0 + timedelta(hours=1))
    assert attached.outcome is RegisterOutcome.ATTACHED
    job = await job_store.get("early")
    assert job is not None
    assert (job.status, job.user_id, job.organization_id) == (Status.GENERATING, "u-1", "org-1")
    assert [entry.status for entry in job.history] == [Status.GENERATING]
    with pytest.raises(KindConflict):
        await job_store.register(registration("early", kind="blog"), T0)


@pytest.mark.parametrize("backend", JOB_BACKENDS)
async def test_a_store_requiring_registration_refuses_unregistered_jobs_only(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = job_store_of(backend, request, tmp_path, require_registered=True)
    await store.open()
    try:
        with pytest.raises(Unregistered):
            await store.apply(event(Status.PENDING, job_id="stranger"))
        assert await store.status_of("stranger") is None
        await store.register(registration("known"), T0)
        assert (await store.apply(event(Status.GENERATING, 1, job_id="known"))).outcome is Outcome.APPLIED
    finally:
        await store.close()


async def test_listing_filters_and_pages_newest_first_each_job_once(job_store: JobStore) -> None:
    """Below ``GET /api/jobs``: every filter, cursor pagination in a stable order (the HTTP test of the same
    runs through the app)."""
    for number in range(30):
        kind = "blog" if number % 5 == 0 else "image"
        await job_store.register(
            registration(f"q-{number:02d}", kind=kind, user_id=f"u-{number % 3}", organization_id=f"org-{number % 2}"),
            T0 + timedelta(minutes=number),
        )
        if number % 4 == 1:
            await job_store.apply(event(Status.FAILED, 2, job_id=f"q-{number:02d}", kind=kind))

    async def pages(query: JobQuery) -> list[str]:
        seen: list[str] = []
        while True:
            page = await job_store.list_jobs(query)
            assert len(page.jobs) <= query.limit
            seen += [job.job_id for job in page.jobs]
            if page.next_cursor is None:
                return seen
            query = msgspec.structs.replace(query, cursor=int(page.next_cursor))

    newest_first = [f"q-{number:02d}" for number in reversed(range(30))]
    assert await pages(JobQuery(limit=7)) == newest_first
    cases = [
        (JobQuery(limit=4, user_id="u-1"), lambda n: n % 3 == 1),
        (JobQuery(limit=4, organization_id="org-0"), lambda n: n % 2 == 0),
        (JobQuery(limit=4, kind="blog"), lambda n: n % 5 == 0),
        (JobQuery(limit=4, status=Status.FAILED), lambda n: n % 4 == 1),
        (
            JobQuery(limit=4, status=Status.PENDING, user_id="u-0", organization_id="org-1"),
            lambda n: n % 6 == 3 and n % 4 != 1,
        ),
        (JobQuery(limit=4, created_after=T0 + timedelta(minutes=10)), lambda n: n >= 10),
        (JobQuery(limit=4, created_before=T0 + timedelta(minutes=10)), lambda n: n < 10),
    ]
    for query, keep in cases:
        want = [job_id for job_id in newest_first if keep(int(job_id.removeprefix("q-")))]
        assert want, query
        assert await pages(query) == want, query


async def test_stats_count_the_window_by_status_and_what_finished_in_it(job_store: JobStore) -> None:
    """Below ``GET /api/jobs/stats`` and the in-progress gauge."""
    now = datetime.now(UTC)
    for number in range(3):
        await job_store.apply(msgspec.structs.replace(event(Status.COMPLETED, job_id=f"ok-{number}"), received_at=now))
    await job_store.apply(msgspec.structs.replace(event(Status.FAILED, job_id="bad"), received_at=now))
    await job_store.apply(msgspec.structs.replace(event(Status.CANCELED, job_id="dropped"), received_at=now))
    await job_store.apply(msgspec.structs.replace(event(Status.GENERATING, job_id="busy"), received_at=now))
    await job_store.register(registration("queued"), now)
    stats = await job_store.stats(now - timedelta(hours=1), now + timedelta(seconds=1))
    assert stats.created == {
        "pending": 1,
        "initializing": 0,
        "generating": 1,
        "saving": 0,
        "completed": 3,
        "failed": 1,
        "canceled": 1,
    }
    # A canceled job is neither a success nor a failure of generation: outside the ratio.
    assert (stats.completed, stats.failed, stats.canceled) == (3, 1, 1)
    assert stats.failure_ratio == pytest.approx(0.25)
    empty = await job_store.stats(now - timedelta(days=2), now - timedelta(days=1))
    assert (sum(empty.created.values()), empty.failure_ratio) == (0, None)
    assert sorted((row.kind, row.status, row.count) for row in await job_store.in_progress()) == [
        ("image", Status.GENERATING, 1),
        ("image", Status.PENDING, 1),
    ]


async def test_events_are_read_in_id_order_after_a_point_per_job_or_per_user(job_store: JobStore) -> None:
    """What the live streams read (below ``/api/jobs/events``): every recorded event, stale ones included,
    after a given id, for one job or one registered user's jobs; duplicates are not events."""
    assert await job_store.last_event_id() == 0
    await job_store.register(registration("mine", user_id="alice"), T0)
    await job_store.register(registration("theirs", user_id="bob"), T0)
    for minute, status in enumerate((Status.PENDING, Status.GENERATING, Status.COMPLETED)):
        await job_store.apply(event(status, minute, job_id="mine"))
        await job_store.apply(event(status, minute, job_id="theirs"))
    await job_store.apply(event(Status.SAVING, 1, job_id="mine"))  # stale
    await job_store.apply(event(Status.SAVING, 1, job_id="mine"))  # a duplicate: not recorded again
    everything = await job_store.events_after(0, 100)
    assert len(everything) == 7
    assert [e.id for e in everything] == sorted({e.id for e in everything})
    assert await job_store.last_event_id() == everything[-1].id
    mine = await job_store.events_after(0, 100, job_id="mine")
    assert [(e.status, e.outcome) for e in mine] == [
        (Status.PENDING, Outcome.APPLIED),
        (Status.GENERATING, Outcome.APPLIED),
        (Status.COMPLETED, Outcome.APPLIED),
        (Status.SAVING, Outcome.STALE),
    ]
    assert {(e.job_id, e.kind, e.user_id) for e in mine} == {("mine", "image", "alice")}
    assert await job_store.events_after(0, 100, user_id="bob") == [e for e in everything if e.job_id == "theirs"]
    assert await job_store.events_after(everything[2].id, 2) == everything[3:5]
    assert await job_store.events_after(everything[-1].id, 100) == []


async def test_a_store_that_answers_pings_and_commits_a_probe_write(job_store: JobStore) -> None:
    await job_store.ping()
    await job_store.probe_write()
    assert (await job_store.list_jobs(JobQuery())).jobs == []  # the probe leaves nothing visible
