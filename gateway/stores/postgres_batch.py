"""Events applied to PostgreSQL in batches: one transaction and a handful of statements for every event a
replica received while its previous batch was being written (group commit).

Event ids must become visible in the order they were taken, or a live stream that has read past id 6
would never send id 5; so each transaction recording events holds one advisory lock (``EVENTS_LOCK``)
from taking the ids until it commits. With a transaction per event that lock serialised every commit's
WAL flush, and a deployment recorded at most one event per flush. A batch pays one flush, and one lock,
for all of its events.

A batch locks the rows of the jobs it touches in job-id order (``FOR UPDATE``: a concurrent batch of
another replica waits, and two batches never deadlock), reads which of its events are recorded already,
decides every event in arrival order with :func:`~gateway.transition.decide` against those rows,
then writes the new jobs, the changed jobs and the events in one statement (their outbox rows, with
forwarding on, in a second one).
The unique ``job_id``, ``event_key`` and ``delivery_id`` stay the last guard of exactly-once: if another
transaction created one of the batch's jobs or recorded one of its events meanwhile, the batch is rolled
back and decided again against what that transaction committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from gateway.model import EventRefused, EventResult, KindConflict, Outcome, Status, Unregistered
from gateway.stores import postgres_outbox
from gateway.stores.records import (
    answer,
    decode_metadata,
    delivery_conflict,
    merge_metadata,
    owner_conflict,
    to_json,
)
from gateway.transition import decide

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from gateway.model import JobEvent
    from gateway.outbox import OutboxWriter
    from gateway.payloads import Metadata
    from gateway.stores.postgres_executor import Connection
    from gateway.transition import Transition

__all__ = ("EVENTS_LOCK", "Pending", "apply_batch")

EVENTS_LOCK = 7450201336512837937
"""The advisory lock key held by every transaction recording events, from taking their ids to commit."""

# Both statements below are planned once per connection (planning them took longer than running them),
# and for tables of any size: a plan made while the tables are nearly empty (a new deployment) would scan
# them whole until autovacuum's next ANALYZE. Settings for the batch's transaction only; one round trip.
# READ COMMITTED whatever the server's default: a batch that lost a race re-reads what the winner committed.
_BEGIN = (
    "BEGIN ISOLATION LEVEL READ COMMITTED;"
    " SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off"
)
# One round trip: the events of the batch recorded already, and the rows of its jobs, locked in job-id
# order (a job of the batch that does not exist yet has no row: one row of NULLs stands for none).
_READ = """
WITH known AS (
    SELECT array(SELECT event_key FROM job_events WHERE event_key = ANY($2::text[])) AS keys,
           array(SELECT delivery_id FROM job_events WHERE delivery_id = ANY($3::text[])) AS delivery_ids
), locked AS MATERIALIZED (
    SELECT job_id, kind, status, metadata, created_at, registered_at, sender FROM jobs
    WHERE job_id = ANY($1::text[]) ORDER BY job_id FOR UPDATE
)
SELECT known.keys, known.delivery_ids, locked.* FROM known LEFT JOIN locked ON true
"""
_DELIVERY_JOBS = "SELECT delivery_id, job_id FROM job_events WHERE delivery_id = ANY($1::text[])"
# One round trip: the new jobs, the changed ones and the events. The events lock is taken once the new
# jobs are inserted (such an insert may wait for another transaction creating the same job, which must
# not be waiting for this one's lock) and before the first event takes its id (every event row is joined
# to the lock's one row); the events' ids ascend in the batch's order.
_WRITE = """
WITH created AS (
    INSERT INTO jobs (job_id, kind, status, result, metadata, error_message, created_at, updated_at, completed_at,
                      sender)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $27::text[])
    ON CONFLICT (job_id) DO NOTHING RETURNING 1
), updated AS (
    UPDATE jobs SET status = v.status, updated_at = coalesce(v.updated_at, jobs.updated_at), metadata = v.metadata,
        result = coalesce(v.result, jobs.result), error_message = coalesce(v.error_message, jobs.error_message),
        completed_at = coalesce(v.completed_at, jobs.completed_at), sender = coalesce(jobs.sender, v.sender)
    FROM unnest($10::text[], $11::text[], $12::timestamptz[], $13::text[], $14::text[], $15::text[],
                $16::timestamptz[], $28::text[])
         AS v (job_id, status, updated_at, metadata, result, error_message, completed_at, sender)
    WHERE jobs.job_id = v.job_id
), recorded AS (
    INSERT INTO job_events (job_id, status, timestamp, received_at, outcome, event_key, delivery_id, metadata,
                            error_message)
    SELECT v.job_id, v.status, v.timestamp, v.received_at, v.outcome, v.event_key, v.delivery_id, v.metadata,
           v.error_message
    FROM (SELECT pg_advisory_xact_lock($26::bigint) FROM (SELECT count(*) FROM created) AS jobs_first) AS events_lock,
         unnest($17::text[], $18::text[], $19::timestamptz[], $20::timestamptz[], $21::text[], $22::text[],
                $23::text[], $24::text[], $25::text[]) WITH ORDINALITY
         AS v (job_id, status, timestamp, received_at, outcome, event_key, delivery_id, metadata, error_message,
               position)
    ORDER BY v.position
    ON CONFLICT DO NOTHING RETURNING event_key, id
)
SELECT (SELECT count(*) FROM created) AS created, recorded.event_key, recorded.id
FROM (SELECT 1) AS one LEFT JOIN recorded ON true
"""


class Pending(NamedTuple):
    """An event waiting for the next batch."""

    event: JobEvent
    traceparent: str | None
    """The webhook's span, for the delivery span to link to (forwarding only)."""


@dataclass(slots=True)
class _Job:
    """A job as the batch leaves it: its locked row, or a new one, with the batch's events applied."""

    kind: str
    status: Status
    metadata: Metadata | None
    created_at: datetime
    registered_at: datetime | None
    sender: str | None = None
    """The sender the job belongs to (``None``: nobody yet)."""
    new: bool = False
    changed: bool = False
    updated_at: datetime | None = None
    # The batch's latest non-null values, written over the stored ones (coalesce).
    result: str | None = None
    error_message: str | None = None
    completed_at: datetime | None = None


class _Decided(NamedTuple):
    """An event the batch records, with what its answer is built from."""

    position: int
    """The event's place in the batch."""
    event: JobEvent
    transition: Transition
    previous: Status | None
    metadata: Metadata | None
    first_seen: datetime


class _Raced(Exception):
    """Another transaction created a job, or recorded an event, of this batch since it was read."""


async def apply_batch(
    db: Connection, batch: Sequence[Pending], *, outbox: OutboxWriter | None, require_registered: bool
) -> list[EventResult | EventRefused]:
    """Apply ``batch`` in one transaction; answer each event in order (a refusal answers, not raises)."""
    while True:
        answers: list[EventResult | EventRefused | None] = []
        await db.execute(_BEGIN)
        try:
            decided, ids = await _write(db, batch, outbox, require_registered, answers)
        except _Raced:
            await db.execute("ROLLBACK")
            continue  # decided again against what the other transaction committed
        # On any other failure the pool rolls back as it takes the connection back (postgres_executor._reset).
        await db.execute("COMMIT")
        for entry in decided:
            answers[entry.position] = answer(
                entry.event, entry.transition, entry.previous, ids[entry.event.key], entry.metadata, entry.first_seen
            )
        return cast("list[EventResult | EventRefused]", answers)  # every None was filled in above


async def _write(
    db: Connection,
    batch: Sequence[Pending],
    outbox: OutboxWriter | None,
    require_registered: bool,
    answers: list[EventResult | EventRefused | None],
) -> tuple[list[_Decided], dict[str, int]]:
    events = [pending.event for pending in batch]
    rows = await db.fetch(
        _READ,
        sorted({event.job_id for event in events}),
        [event.key for event in events],
        [event.delivery_id for event in events if event.delivery_id is not None],
    )
    jobs = {
        row["job_id"]: _Job(
            kind=row["kind"],
            status=Status(row["status"]),
            metadata=decode_metadata(row["metadata"]),
            created_at=row["created_at"],
            registered_at=row["registered_at"],
            sender=row["sender"],
        )
        for row in rows
        if row["job_id"] is not None
    }
    keys: set[str] = set(rows[0]["keys"])
    # The jobs of recorded delivery ids, looked up only when there are any (a duplicate, never the hot path).
    delivery_jobs: dict[str, str] = (
        {row["delivery_id"]: row["job_id"] for row in await db.fetch(_DELIVERY_JOBS, rows[0]["delivery_ids"])}
        if rows[0]["delivery_ids"]
        else {}
    )
    decided = [
        entry
        for index, event in enumerate(events)
        if (entry := _decide(index, event, jobs, keys, delivery_jobs, require_registered, answers)) is not None
    ]
    if not decided:
        return decided, {}  # nothing to write: every event was refused or is recorded already
    new = sorted((job_id, job) for job_id, job in jobs.items() if job.new)
    changed = sorted((job_id, job) for job_id, job in jobs.items() if job.changed and not job.new)
    created, updated = _created(new), _changed(changed)
    written = await db.fetch(
        _WRITE, *created[:-1], *updated[:-1], *_recorded(decided), EVENTS_LOCK, created[-1], updated[-1]
    )
    ids = {row["event_key"]: row["id"] for row in written if row["event_key"] is not None}
    if written[0]["created"] != len(new) or len(ids) != len(decided):
        raise _Raced
    if outbox is not None:
        applied = [entry for entry in decided if entry.transition.outcome is Outcome.APPLIED]
        await postgres_outbox.enqueue(
            db, outbox, [(entry.event, ids[entry.event.key], batch[entry.position].traceparent) for entry in applied]
        )
    return decided, ids


def _decide(
    index: int,
    event: JobEvent,
    jobs: dict[str, _Job],
    keys: set[str],
    delivery_jobs: dict[str, str],
    require_registered: bool,
    answers: list[EventResult | EventRefused | None],
) -> _Decided | None:
    """Decide one event against its job as the batch's earlier events left it; answer it now unless the
    batch records it (``None``: refused or already recorded)."""
    job = jobs.get(event.job_id)
    # Ownership first: another sender learns nothing of the job (not even its kind) but that it is not its.
    owned = owner_conflict(event, job.sender) if job is not None else None
    if owned is not None:
        answers.append(owned)
        return None
    if job is not None and job.kind != event.kind:
        answers.append(KindConflict(event.job_id, job.kind))
        return None
    if require_registered and (job is None or job.registered_at is None):
        answers.append(Unregistered(event.job_id))
        return None
    delivery_job = delivery_jobs.get(event.delivery_id) if event.delivery_id is not None else None
    conflict = delivery_conflict(event, event.key in keys, delivery_job)
    if conflict is not None:
        answers.append(conflict)
        return None
    if event.key in keys or delivery_job is not None:
        answers.append(EventResult(outcome=Outcome.DUPLICATE, status=job.status if job is not None else event.status))
        return None
    keys.add(event.key)
    if event.delivery_id is not None:
        delivery_jobs[event.delivery_id] = event.job_id
    answers.append(None)  # built once the event has its id
    received = event.received_at
    result = bytes(event.result).decode() if event.result is not None else None
    completed = received if event.status.terminal else None
    if job is None:
        jobs[event.job_id] = _Job(
            kind=event.kind,
            status=event.status,
            metadata=event.metadata,
            created_at=received,
            registered_at=None,
            sender=event.sender,
            new=True,
            updated_at=received,
            result=result,
            error_message=event.error_message,
            completed_at=completed,
        )
        return _Decided(index, event, decide(None, event.status), None, event.metadata, received)
    previous = job.status
    transition = decide(previous, event.status)
    if job.sender is None and event.sender is not None:  # a job nobody claimed yet: this sender's now
        job.sender = event.sender
        job.changed = True
    if transition.outcome is Outcome.APPLIED:
        job.metadata = merge_metadata(job.metadata, event.metadata)
        job.status = event.status
        job.updated_at = received
        job.changed = True
        job.result = result if result is not None else job.result
        job.error_message = event.error_message if event.error_message is not None else job.error_message
        if transition.moves and completed is not None:
            job.completed_at = completed
    return _Decided(index, event, transition, previous, job.metadata, job.created_at)


def _created(new: list[tuple[str, _Job]]) -> list[list[Any]]:
    return _columns(
        [
            (
                job_id,
                job.kind,
                job.status.value,
                job.result,
                to_json(job.metadata),
                job.error_message,
                job.created_at,
                job.updated_at,
                job.completed_at,
                job.sender,
            )
            for job_id, job in new
        ],
        10,
    )


def _changed(changed: list[tuple[str, _Job]]) -> list[list[Any]]:
    return _columns(
        [
            (
                job_id,
                job.status.value,
                job.updated_at,
                to_json(job.metadata),
                job.result,
                job.error_message,
                job.completed_at,
                job.sender,
            )
            for job_id, job in changed
        ],
        8,
    )


def _recorded(decided: list[_Decided]) -> list[list[Any]]:
    return _columns(
        [
            (
                entry.event.job_id,
                entry.event.status.value,
                entry.event.timestamp,
                entry.event.received_at,
                entry.transition.outcome.value,
                entry.event.key,
                entry.event.delivery_id,
                to_json(entry.event.metadata),
                entry.event.error_message,
            )
            for entry in decided
        ],
        9,
    )


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one array per column, for ``unnest``: a statement writes any number of rows."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
