"""The shared job store: PostgreSQL through an asyncpg pool, for several gateway replicas at once.

Events are applied in batches (:mod:`gateway.stores.postgres_batch`, on the executor's group commit): a
replica's events queue while its previous batch is written, and the next batch takes them all in one
transaction that locks the jobs' rows, so concurrent events of one job, on any replica, are decided one
after the other by :func:`~gateway.transition.decide` against the committed state. The unique
``event_key`` and ``delivery_id`` make the database the last guard of exactly-once, whatever the
idempotency store forgot. Every call runs on the database's
:class:`~gateway.stores.postgres_executor.PostgresExecutor` (shared with the outbox in the same database),
bounded by its timeout; any failure is :class:`~gateway.model.StoreUnavailable`: the webhook gets 503,
never half-applied.
"""

from __future__ import annotations

import logging
import uuid
from functools import partial
from typing import TYPE_CHECKING

import asyncpg

from gateway.model import (
    EventResult,
    InProgress,
    Job,
    JobEvent,
    JobPage,
    JobStats,
    JobSummary,
    KindConflict,
    Outcome,
    Status,
    StreamEvent,
)
from gateway.outbox import current_traceparent
from gateway.registration import Registered, RegisterOutcome, differing_fields
from gateway.stores import rows as rows_
from gateway.stores.postgres_batch import Pending, apply_batch
from gateway.stores.postgres_executor import PROBE, PostgresExecutor
from gateway.stores.queries import EVENT_COLUMNS, decode_context, events_where, job_stats, jobs_where
from gateway.stores.records import recorded_status, to_json

if TYPE_CHECKING:
    from datetime import datetime

    from gateway.outbox import OutboxWriter
    from gateway.registration import Registration
    from gateway.stores.postgres_executor import Connection
    from gateway.stores.queries import JobQuery

__all__ = ("PostgresJobStore",)

logger = logging.getLogger(__name__)

# Replicas pruning at once skip each other's rows (SKIP LOCKED), as do rows an event is updating right now.
_PRUNE = (
    "WITH doomed AS (SELECT job_id FROM jobs"
    " WHERE status IN ('completed', 'failed', 'canceled') AND completed_at < $1"
    " ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " events AS (DELETE FROM job_events WHERE job_id IN (SELECT job_id FROM doomed)),"
    " gone AS (DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM doomed) RETURNING 1)"
    " SELECT count(*) FROM gone"
)


class PostgresJobStore:
    """:class:`~gateway.stores.base.JobStore` on PostgreSQL; ``pool_size`` connections at most per process."""

    decides_duplicates = True
    """A batch decides every copy of a delivery against the keys committed, under the jobs' row locks, and
    answers only after its commit; a copy another replica commits meanwhile makes it decide again."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout: float = 2.0,
        outbox: OutboxWriter | None = None,
        require_registered: bool = False,
    ) -> None:
        self.executor = PostgresExecutor(url, pool_size=pool_size, timeout=timeout)
        """The database's pool, shared with the outbox in the same database."""
        self._outbox = outbox
        """Where applied events are queued for delivery; ``None``: forwarding is off."""
        self._applies = self.executor.group_commit(
            "apply", partial(apply_batch, outbox=outbox, require_registered=require_registered)
        )
        """Events written in batches on the executor's pool; ``require_registered``
        (``GATEWAY_REQUIRE_REGISTERED_JOBS``) refuses events of jobs the app did not register."""

    async def open(self, *, apply_migrations: bool = True) -> None:
        """Create the pool (connections are opened on demand) and bring the schema up to date if asked."""
        await self.executor.open(apply_migrations=apply_migrations)

    async def close(self) -> None:
        """Write (or refuse) the events already queued, then close the pool."""
        await self.executor.close()

    async def ping(self) -> None:
        await self.executor.run("ping", lambda db: db.fetchval("SELECT 1"))

    async def probe_write(self) -> None:
        await self.executor.run(PROBE, _probe)

    async def apply(self, event: JobEvent) -> EventResult:
        outbox = self._outbox
        traceparent = current_traceparent() if outbox is not None else None
        applied = await self._applies.submit(Pending(event, traceparent))
        if outbox is not None and applied.outcome is Outcome.APPLIED:
            outbox.on_written()
        return applied

    async def status_of(self, job_id: str) -> Status | None:
        status = await self.executor.run(
            "status_of", lambda db: db.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
        )
        return Status(status) if status is not None else None

    async def recorded(self, event: JobEvent) -> Status | None:
        query = (
            "SELECT (SELECT status FROM jobs WHERE job_id = $1) AS status,"
            " EXISTS (SELECT 1 FROM job_events WHERE event_key = $2) AS known,"
            " (SELECT job_id FROM job_events WHERE delivery_id = $3) AS delivery_job"
        )
        row = await self.executor.run(
            "recorded", lambda db: db.fetchrow(query, event.job_id, event.key, event.delivery_id)
        )
        if row is None:
            return None
        return recorded_status(event, row["status"], row["known"], row["delivery_job"])

    async def get(self, job_id: str) -> Job | None:
        return await self.executor.run("get", lambda db: _get(db, job_id))

    async def list_jobs(self, query: JobQuery) -> JobPage:
        return await self.executor.run("list", lambda db: _list(db, query))

    async def register(self, registration: Registration, now: datetime) -> Registered:
        return await self.executor.run("register", lambda db: _register(db, registration, now))

    async def events_after(
        self, after: int, limit: int, *, job_id: str | None = None, user_id: str | None = None
    ) -> list[StreamEvent]:
        where, params = events_where(after, job_id, user_id, lambda n: f"${n}")
        rows = await self.executor.run(
            "events",
            lambda db: db.fetch(
                f"SELECT {EVENT_COLUMNS} FROM job_events e JOIN jobs j ON j.job_id = e.job_id"  # noqa: S608
                f" {where} ORDER BY e.id LIMIT ${len(params) + 1}",
                *params,
                limit,
            ),
        )
        return [rows_.stream_event(row, rows_.as_stored) for row in rows]

    async def last_event_id(self) -> int:
        last = await self.executor.run("events", lambda db: db.fetchval("SELECT max(id) FROM job_events"))
        return int(last or 0)

    async def stats(self, since: datetime, until: datetime) -> JobStats:
        async def count(db: Connection) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
            created = await db.fetch(
                "SELECT status, count(*) AS n FROM jobs WHERE created_at >= $1 AND created_at < $2 GROUP BY status",
                since,
                until,
            )
            finished = await db.fetch(
                "SELECT status, count(*) AS n FROM jobs WHERE completed_at >= $1 AND completed_at < $2 GROUP BY status",
                since,
                until,
            )
            return created, finished

        created, finished = await self.executor.run("stats", count)
        by_status = dict.fromkeys((status.value for status in Status), 0)
        by_status.update({r["status"]: r["n"] for r in created})
        return job_stats(since, until, by_status, {r["status"]: r["n"] for r in finished})

    async def in_progress(self) -> list[InProgress]:
        rows = await self.executor.run(
            "in_progress",
            lambda db: db.fetch(
                "SELECT kind, status, count(*) AS count, min(created_at) AS oldest FROM jobs"
                " WHERE status IN ('pending', 'initializing', 'generating', 'saving') GROUP BY kind, status"
            ),
        )
        return [rows_.in_progress(row, rows_.as_stored) for row in rows]

    async def prune_finished(self, before: datetime, limit: int) -> int:
        deleted: int = await self.executor.run("prune", lambda db: db.fetchval(_PRUNE, before, limit))
        return deleted


_PROBE_FILLER = "0" * 8192


async def _probe(db: Connection) -> None:
    """Insert a job row of a few pages and delete it, in one committed transaction: a database that
    cannot write (full disk, read-only, privileges) refuses it. Its id has a space, which no job id has,
    and is unique: no real job is ever touched."""
    async with db.transaction():
        seq = await db.fetchval(
            "INSERT INTO jobs (job_id, kind, status, result, created_at, updated_at)"
            " VALUES ($1, 'probe', 'pending', $2, now(), now()) RETURNING seq",
            f"readiness probe {uuid.uuid4().hex}",
            _PROBE_FILLER,
        )
        await db.execute("DELETE FROM jobs WHERE seq = $1", seq)


async def _get(db: Connection, job_id: str) -> Job | None:
    row = await db.fetchrow(f"SELECT {rows_.JOB_COLUMNS} FROM jobs WHERE job_id = $1", job_id)  # noqa: S608
    if row is None:
        return None
    events = await db.fetch(
        f"SELECT {rows_.HISTORY_COLUMNS} FROM job_events WHERE job_id = $1 ORDER BY id",  # noqa: S608
        job_id,
    )
    history = [rows_.history_entry(event, rows_.as_stored) for event in events]
    return Job(**rows_.job_fields(row, rows_.as_stored), history=history)


async def _list(db: Connection, query: JobQuery) -> JobPage:
    where, params = jobs_where(query, lambda n: f"${n}", lambda moment: moment)
    params.append(query.limit + 1)
    rows = await db.fetch(
        f"SELECT {rows_.JOB_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ${len(params)}",  # noqa: S608
        *params,
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return JobPage(
        jobs=[JobSummary(**rows_.job_fields(row, rows_.as_stored)) for row in rows],
        next_cursor=str(rows[-1]["seq"]) if more else None,
    )


async def _register(db: Connection, registration: Registration, now: datetime) -> Registered:
    """Create the job as ``pending``, or attach the context to the job its webhooks created, or compare."""
    while (registered := await _register_once(db, registration, now)) is None:
        pass  # the job was pruned (retention) between finding and locking it: register it afresh
    return registered


async def _register_once(db: Connection, registration: Registration, now: datetime) -> Registered | None:
    context = to_json(registration.context)
    async with db.transaction():
        created = await db.fetchval(
            "INSERT INTO jobs (job_id, kind, status, created_at, updated_at, user_id, organization_id,"
            " registered_at, context) VALUES ($1, $2, 'pending', $3, $3, $4, $5, $3, $6)"
            " ON CONFLICT (job_id) DO NOTHING RETURNING seq",
            registration.job_id,
            registration.kind,
            now,
            registration.user_id,
            registration.organization_id,
            context,
        )
        if created is not None:
            return Registered(outcome=RegisterOutcome.CREATED)
        row = await db.fetchrow(
            "SELECT kind, user_id, organization_id, registered_at, context FROM jobs WHERE job_id = $1 FOR UPDATE",
            registration.job_id,
        )
        if row is None:
            return None
        if row["kind"] != registration.kind:
            raise KindConflict(registration.job_id, row["kind"])
        if row["registered_at"] is None:
            await db.execute(
                "UPDATE jobs SET user_id = $1, organization_id = $2, registered_at = $3, context = $4"
                " WHERE job_id = $5",
                registration.user_id,
                registration.organization_id,
                now,
                context,
                registration.job_id,
            )
            return Registered(outcome=RegisterOutcome.ATTACHED)
    differs = differing_fields(registration, row["user_id"], row["organization_id"], decode_context(row["context"]))
    return Registered(outcome=RegisterOutcome.CONFLICT if differs else RegisterOutcome.UNCHANGED, differs=differs)
