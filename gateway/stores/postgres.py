"""The shared job store: PostgreSQL through an asyncpg pool, for several gateway replicas at once.

Events are applied in batches (group commit, see :mod:`gateway.stores.postgres_batch`): a replica's
events queue while its previous batch is written, and the next batch takes them all in one transaction
that locks the jobs' rows, so concurrent events of one job, on any replica, are decided one after the
other by :func:`~gateway.transition.decide` against the committed state. The unique ``event_key``
and ``delivery_id`` make the database the last guard of exactly-once, whatever the idempotency store
forgot. Every call is bounded by one timeout (waiting for a pooled connection included) and any failure
of the driver, the network or the server is :class:`~gateway.stores.base.StoreUnavailable`: the webhook
gets 503, never half-applied. The pool replaces broken connections by itself, so the store heals when
PostgreSQL comes back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import msgspec

from gateway.delivery.outbox import current_traceparent
from gateway.model import (
    Applied,
    HistoryEntry,
    InProgress,
    Job,
    JobEvent,
    JobPage,
    JobStats,
    JobSummary,
    KindConflict,
    Outcome,
    Refused,
    Status,
    StreamEvent,
)
from gateway.registration import Registered, RegisterOutcome, differing_fields
from gateway.stores import migrations
from gateway.stores.base import Outage, StoreUnavailable, to_the_end
from gateway.stores.postgres_batch import Pending, apply_batch
from gateway.stores.queries import EVENT_COLUMNS, decode_context, events_where, job_stats, jobs_where
from gateway.stores.records import decode_metadata, recorded_status, to_json

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import datetime

    from asyncpg.pool import PoolConnectionProxy

    from gateway.delivery.outbox import OutboxWriter
    from gateway.registration import Registration
    from gateway.stores.queries import JobQuery

    Connection = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

__all__ = ("PostgresJobStore", "migrate")

logger = logging.getLogger(__name__)

T = TypeVar("T")

_JOB_COLUMNS = (
    "seq, job_id, kind, status, result, metadata, error_message, created_at, updated_at, completed_at,"
    " user_id, organization_id, registered_at, context"
)
# Replicas pruning at once skip each other's rows (SKIP LOCKED), as do rows an event is updating right now.
_PRUNE = (
    "WITH doomed AS (SELECT job_id FROM jobs"
    " WHERE status IN ('completed', 'failed', 'canceled') AND completed_at < $1"
    " ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " events AS (DELETE FROM job_events WHERE job_id IN (SELECT job_id FROM doomed)),"
    " gone AS (DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM doomed) RETURNING 1)"
    " SELECT count(*) FROM gone"
)
_MAX_BATCH = 256
_MIGRATION_LOCK = 0x6761746577617901  # pg_advisory_lock key: replicas starting together migrate one at a time


class PostgresJobStore:
    """:class:`~gateway.stores.base.JobStore` on PostgreSQL; ``pool_size`` connections at most per process."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout: float = 2.0,
        outbox: OutboxWriter | None = None,
        require_registered: bool = False,
    ) -> None:
        self._url = url
        self._outbox = outbox
        """Where applied events are queued for delivery; ``None``: forwarding is off."""
        self._require_registered = require_registered
        """``GATEWAY_REQUIRE_REGISTERED_JOBS``: refuse events of jobs the app did not register."""
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._queued: list[Pending] = []
        """Events waiting for the next batch."""
        self._writer: asyncio.Task[None] | None = None
        """The task writing batches, one at a time; ``None`` while nothing waits."""
        self._writes = Outage("job store writes", logger)
        self._reads = Outage("job store reads", logger)
        """Logged when they start failing and when they work again, not per call; apart, since a database
        that refuses writes (full disk, read-only) may still answer reads."""

    async def open(self, *, apply_migrations: bool = True) -> None:
        """Create the pool (connections are opened on demand) and bring the schema up to date if asked."""
        try:
            async with asyncio.timeout(self._timeout * 5):
                self._pool = await asyncpg.create_pool(
                    self._url,
                    min_size=0,
                    max_size=self._pool_size,
                    timeout=self._timeout,  # connecting
                    command_timeout=self._timeout,
                    max_inactive_connection_lifetime=60,
                    reset=_reset,
                )
                if apply_migrations:
                    async with self._pool.acquire() as connection:
                        await _migrate(connection)
        except Exception as error:
            raise StoreUnavailable("job", "open") from error

    async def close(self) -> None:
        if self._writer is not None:  # the events already queued are written (or refused) first
            await asyncio.shield(self._writer)  # a caller giving up on close() must not cut a batch off
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except Exception:  # an unreachable server: drop the connections rather than wait on them
                pool.terminate()

    async def ping(self) -> None:
        await self._run("ping", lambda db: db.fetchval("SELECT 1"))

    async def probe_write(self) -> None:
        await self._run(_PROBE, _probe)

    async def apply(self, event: JobEvent) -> Applied:
        if self._pool is None:
            raise StoreUnavailable("job", "apply")
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Applied] = loop.create_future()
        traceparent = current_traceparent() if outbox is not None else None
        self._queued.append(Pending(event, traceparent, future, loop.time() + self._timeout))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_batches())
        # A caller cancelled meanwhile (the shutdown deadline) still gets the batch's truthful answer.
        applied = await to_the_end(future)
        if outbox is not None and applied.outcome is Outcome.APPLIED:
            outbox.on_written()
        return applied

    async def _write_batches(self) -> None:
        """Write what queued up, a batch at a time, until nothing waits: the events arriving while a batch
        is written make the next one, so batches grow with the load and stay at one event when idle.

        Every event is answered within the store's timeout of its arrival, as any other call: one that
        waited that long already is refused unwritten, and a batch must commit by its oldest event's
        deadline. Whatever ends this task, every waiting caller gets an answer."""
        batch: list[Pending] = []
        try:
            while self._queued:
                now = asyncio.get_running_loop().time()
                expired = 0
                while expired < len(self._queued) and self._queued[expired].deadline <= now:
                    expired += 1
                _refuse(self._queued[:expired])
                batch, self._queued = self._queued[expired : expired + _MAX_BATCH], self._queued[expired + _MAX_BATCH :]
                if not batch:
                    break
                try:
                    work = partial(apply_batch, batch=batch, outbox=self._outbox, require=self._require_registered)
                    answers: Sequence[Applied | Refused] = await self._run("apply", work, deadline=batch[0].deadline)
                except StoreUnavailable:
                    _refuse(batch)
                    continue
                for pending, answer in zip(batch, answers, strict=True):
                    if isinstance(answer, Refused):
                        pending.future.set_exception(answer)
                    else:
                        pending.future.set_result(answer)
        finally:
            self._writer = None
            waiting, self._queued = self._queued, []
            _refuse([*batch, *waiting])

    async def run(self, operation: str, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection for a neighbour sharing the database (the delivery outbox),
        within the store's timeout; any failure is StoreUnavailable."""
        return await self._run(operation, work)

    async def status_of(self, job_id: str) -> Status | None:
        status = await self._run(
            "status_of", lambda db: db.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
        )
        return Status(status) if status is not None else None

    async def recorded(self, event: JobEvent) -> Status | None:
        query = (
            "SELECT (SELECT status FROM jobs WHERE job_id = $1) AS status,"
            " EXISTS (SELECT 1 FROM job_events WHERE event_key = $2) AS known,"
            " (SELECT job_id FROM job_events WHERE delivery_id = $3) AS delivery_job"
        )
        row = await self._run("recorded", lambda db: db.fetchrow(query, event.job_id, event.key, event.delivery_id))
        if row is None:
            return None
        return recorded_status(event, row["status"], row["known"], row["delivery_job"])

    async def get(self, job_id: str) -> Job | None:
        return await self._run("get", lambda db: _get(db, job_id))

    async def list_jobs(self, query: JobQuery) -> JobPage:
        return await self._run("list", lambda db: _list(db, query))

    async def register(self, registration: Registration, now: datetime) -> Registered:
        return await self._run("register", lambda db: _register(db, registration, now))

    async def events_after(
        self, after: int, limit: int, *, job_id: str | None = None, user_id: str | None = None
    ) -> list[StreamEvent]:
        where, params = events_where(after, job_id, user_id, lambda n: f"${n}")
        rows = await self._run(
            "events",
            lambda db: db.fetch(
                f"SELECT {EVENT_COLUMNS} FROM job_events e JOIN jobs j ON j.job_id = e.job_id"  # noqa: S608
                f" {where} ORDER BY e.id LIMIT ${len(params) + 1}",
                *params,
                limit,
            ),
        )
        return [
            StreamEvent(
                id=r["id"],
                job_id=r["job_id"],
                kind=r["kind"],
                status=Status(r["status"]),
                outcome=Outcome(r["outcome"]),
                timestamp=r["timestamp"],
                received_at=r["received_at"],
                user_id=r["user_id"],
                organization_id=r["organization_id"],
            )
            for r in rows
        ]

    async def last_event_id(self) -> int:
        last = await self._run("events", lambda db: db.fetchval("SELECT max(id) FROM job_events"))
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

        created, finished = await self._run("stats", count)
        by_status = dict.fromkeys((status.value for status in Status), 0)
        by_status.update({r["status"]: r["n"] for r in created})
        return job_stats(since, until, by_status, {r["status"]: r["n"] for r in finished})

    async def in_progress(self) -> list[InProgress]:
        rows = await self._run(
            "in_progress",
            lambda db: db.fetch(
                "SELECT kind, status, count(*) AS count, min(created_at) AS oldest FROM jobs"
                " WHERE status IN ('pending', 'initializing', 'generating', 'saving') GROUP BY kind, status"
            ),
        )
        return [
            InProgress(kind=r["kind"], status=Status(r["status"]), count=r["count"], oldest_created_at=r["oldest"])
            for r in rows
        ]

    async def prune_finished(self, before: datetime, limit: int) -> int:
        deleted: int = await self._run("prune", lambda db: db.fetchval(_PRUNE, before, limit))
        return deleted

    async def _run(
        self, operation: str, work: Callable[[Connection], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """Run ``work`` on a pooled connection within the timeout (or by the loop time ``deadline``); any
        failure is StoreUnavailable."""
        # A probe's failure is readiness's to report (/readyz), not an outage of the webhooks' writes.
        outage = None if operation == _PROBE else self._reads if operation in _READS else self._writes
        if self._pool is None:
            raise StoreUnavailable("job", operation)
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline), self._pool.acquire() as connection:
                result = await work(connection)
        except Refused:
            raise
        except Exception as error:
            # Refused connection, server restart, timeout, lost connection, full disk, read-only database:
            # all mean "retry later". Only the error's type is logged: a message may quote a row's values.
            if outage is not None:
                outage.failed(operation, type(error).__name__)
            raise StoreUnavailable("job", operation) from error
        if outage is not None:
            outage.worked()
        return result


_READS = frozenset(
    {"ping", "recorded", "get", "list", "events", "stats", "status_of", "in_progress", "outbox_list", "outbox_backlog"}
    | {"outbox_disabled"}
)
"""The operations that only read; every other one (webhooks, registration, pruning, the outbox's) writes."""
_PROBE = "probe"
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


def _refuse(waiting: Sequence[Pending]) -> None:
    """Answer events that will not be written (the store failed, or they waited too long) with a 503."""
    for pending in waiting:
        if not pending.future.done():
            pending.future.set_exception(StoreUnavailable("job", "apply"))


async def _reset(connection: Connection) -> None:
    """Roll back a transaction a cancelled call left open; otherwise nothing (the gateway keeps no session
    state), which saves asyncpg's default reset, a round trip per release."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def _get(db: Connection, job_id: str) -> Job | None:
    row = await db.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = $1", job_id)  # noqa: S608
    if row is None:
        return None
    events = await db.fetch(
        "SELECT id, status, timestamp, received_at, outcome, delivery_id, error_message, metadata"
        " FROM job_events WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    history = [
        HistoryEntry(
            id=e["id"],
            status=Status(e["status"]),
            timestamp=e["timestamp"],
            received_at=e["received_at"],
            outcome=Outcome(e["outcome"]),
            stale=e["outcome"] == Outcome.STALE,
            delivery_id=e["delivery_id"],
            error_message=e["error_message"],
            metadata=decode_metadata(e["metadata"]),
        )
        for e in events
    ]
    return Job(**_job_fields(row), history=history)


async def _list(db: Connection, query: JobQuery) -> JobPage:
    where, params = jobs_where(query, lambda n: f"${n}", lambda moment: moment)
    params.append(query.limit + 1)
    rows = await db.fetch(
        f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ${len(params)}",  # noqa: S608
        *params,
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return JobPage(
        jobs=[JobSummary(**_job_fields(row)) for row in rows], next_cursor=str(rows[-1]["seq"]) if more else None
    )


def _job_fields(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "job_id": row["job_id"],
        "kind": row["kind"],
        "status": Status(row["status"]),
        "result": msgspec.Raw(row["result"].encode()) if row["result"] is not None else None,
        "metadata": decode_metadata(row["metadata"]),
        "error_message": row["error_message"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "completed_at": row["completed_at"],
        "user_id": row["user_id"],
        "organization_id": row["organization_id"],
        "registered_at": row["registered_at"],
        "context": decode_context(row["context"]),
    }


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


async def _migrate(db: Connection) -> list[int]:
    """Apply pending migrations, each in its own transaction, under an advisory lock held by one replica."""
    applied: list[int] = []
    await db.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in migrations.load("postgresql"):
            async with db.transaction():
                done = await db.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", migration.version)
                if done is None:
                    await db.execute(migration.sql)  # several statements: the simple query protocol runs them all
                    await db.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                    applied.append(migration.version)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def migrate(url: str) -> list[int]:
    """Apply pending migrations to the PostgreSQL database at ``url``; return the versions applied."""
    db = await asyncpg.connect(url, timeout=30)
    try:
        return await _migrate(db)
    finally:
        await db.close()
