"""The outbox on PostgreSQL, shared by every replica.

A claim takes the due head of each job's queue with ``FOR UPDATE SKIP LOCKED`` and leases it (owner and
expiry) in the same statement: two replicas never claim one row, and the rows of a replica that died
mid-delivery are claimed again once their lease expired. Settling a row checks the lease is still ours,
so a replica that lost its lease (stalled past it) cannot overwrite the new owner's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from gateway.outbox import (
    Backlog,
    Claimed,
    DeliveryPage,
    DeliveryRecord,
    DeliveryState,
    DisabledSink,
    OutboxWriter,
)
from gateway.stores import rows as rows_

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from gateway.model import JobEvent
    from gateway.stores.postgres_executor import PostgresExecutor

    Connection = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

__all__ = ("PostgresOutbox", "enqueue")

T = TypeVar("T")


_CLAIM = """
WITH due AS (
    SELECT id FROM deliveries d
    WHERE state = 'pending' AND sink = ANY($1::text[]) AND next_attempt_at <= $2
      AND (lease_expires_at IS NULL OR lease_expires_at <= $2)
      AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.job_id = d.job_id AND e.sink = d.sink
                      AND e.state = 'pending' AND e.sequence < d.sequence)
    ORDER BY next_attempt_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries SET lease_owner = $4, lease_expires_at = $5, attempts = attempts + 1
FROM due WHERE deliveries.id = due.id AND deliveries.state = 'pending'
RETURNING deliveries.id, event_id, sequence, sink, job_id, kind, status, body, attempts, traceparent
"""
"""Returns :data:`~gateway.stores.rows.CLAIMED_COLUMNS`, ``attempts`` already counting this claim."""


async def enqueue(db: Connection, writer: OutboxWriter, applied: Sequence[tuple[JobEvent, int, str | None]]) -> None:
    """Write the rows of the applied events (each with its sequence and traceparent), one per event and
    sink, inside the job store's transaction; due at once."""
    rows = writer.rows(applied, rows_.as_stored)
    if rows:
        await db.executemany(
            "INSERT INTO deliveries (sequence, event_id, sink, job_id, kind, status, body, traceparent,"
            " next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9)",
            rows,
        )


class PostgresOutbox:
    """:class:`~gateway.outbox.Outbox` in the PostgreSQL job store's database."""

    def __init__(self, executor: PostgresExecutor) -> None:
        self._executor = executor

    async def claim(
        self, owner: str, sinks: Sequence[str], limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        until = now + timedelta(seconds=lease_seconds)
        rows = await self._executor.run(
            "outbox_claim", lambda db: db.fetch(_CLAIM, list(sinks), now, limit, owner, until)
        )
        return [rows_.claimed(row, attempt=row[8]) for row in sorted(rows, key=lambda row: row[0])]

    async def delivered(self, row_id: int, owner: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_delivered", "state = 'delivered', delivered_at = $4, last_error = NULL", (now,), row_id, owner, now
        )

    async def delivered_many(self, row_ids: Sequence[int], owner: str, now: datetime) -> set[int]:
        rows = await self._executor.run(
            "outbox_delivered",
            lambda db: db.fetch(
                "UPDATE deliveries SET state = 'delivered', delivered_at = $3, last_error = NULL,"
                " lease_owner = NULL, lease_expires_at = NULL, updated_at = $3"
                " WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending' RETURNING id",
                list(row_ids),
                owner,
                now,
            ),
        )
        return {row[0] for row in rows}

    async def retry(self, row_id: int, owner: str, at: datetime, error: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_retry", "next_attempt_at = $4, last_error = $5", (at, error), row_id, owner, now
        )

    async def dead(self, row_id: int, owner: str, error: str, now: datetime) -> bool:
        return await self._settle("outbox_dead", "state = 'dead', last_error = $4", (error,), row_id, owner, now)

    async def release(self, row_id: int, owner: str, error: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_release", "attempts = attempts - 1, last_error = $4", (error,), row_id, owner, now
        )

    async def _settle(
        self, operation: str, assignments: str, values: tuple[Any, ...], row_id: int, owner: str, now: datetime
    ) -> bool:
        sql = (
            f"UPDATE deliveries SET {assignments}, lease_owner = NULL, lease_expires_at = NULL, updated_at = $3"  # noqa: S608
            " WHERE id = $1 AND lease_owner = $2 AND state = 'pending'"
        )
        status = await self._executor.run(operation, lambda db: db.execute(sql, row_id, owner, now, *values))
        return bool(status == "UPDATE 1")

    async def release_leases(self, owner: str) -> int:
        status = await self._executor.run(
            "outbox_release_leases",
            lambda db: db.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1", owner
            ),
        )
        return int(status.rpartition(" ")[2])

    async def disable_sink(self, sink: str, reason: str, now: datetime) -> None:
        await self._executor.run(
            "outbox_disable",
            lambda db: db.execute(
                "INSERT INTO delivery_sinks_disabled (sink, reason, disabled_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (sink) DO UPDATE SET reason = excluded.reason, disabled_at = excluded.disabled_at",
                sink,
                reason,
                now,
            ),
        )

    async def enable_sink(self, sink: str) -> bool:
        status = await self._executor.run(
            "outbox_enable", lambda db: db.execute("DELETE FROM delivery_sinks_disabled WHERE sink = $1", sink)
        )
        return bool(status == "DELETE 1")

    async def disabled_sinks(self) -> list[DisabledSink]:
        rows = await self._executor.run(
            "outbox_disabled", lambda db: db.fetch("SELECT sink, reason, disabled_at FROM delivery_sinks_disabled")
        )
        return [rows_.disabled_sink(row, rows_.as_stored) for row in rows]

    async def list_deliveries(
        self, *, state: DeliveryState | None, job_id: str | None, limit: int, cursor: int | None
    ) -> DeliveryPage:
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("state =", state and state.value), ("job_id =", job_id), ("id <", cursor)):
            if value is not None:
                params.append(value)
                clauses.append(f"{column} ${len(params)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit + 1)
        sql = f"SELECT {rows_.DELIVERY_COLUMNS} FROM deliveries {where} ORDER BY id DESC LIMIT ${len(params)}"  # noqa: S608
        rows = await self._executor.run("outbox_list", lambda db: db.fetch(sql, *params))
        more = len(rows) > limit
        rows = rows[:limit]
        return DeliveryPage(
            deliveries=[rows_.delivery_record(row, rows_.as_stored) for row in rows],
            next_cursor=str(rows[-1]["id"]) if more else None,
        )

    async def replay(self, row_id: int, now: datetime) -> DeliveryRecord | None:
        async def replay(db: Connection) -> asyncpg.Record | None:
            await db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2,"
                " pending_since = $2, delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = $1 AND state <> 'pending'",
                row_id,
                now,
            )
            return await db.fetchrow(f"SELECT {rows_.DELIVERY_COLUMNS} FROM deliveries WHERE id = $1", row_id)  # noqa: S608

        row = await self._executor.run("outbox_replay", replay)
        return rows_.delivery_record(row, rows_.as_stored) if row is not None else None

    async def replay_all(self, state: DeliveryState, job_id: str | None, now: datetime) -> int:
        status = await self._executor.run(
            "outbox_replay_all",
            lambda db: db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1,"
                " pending_since = $1, delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE state = $2 AND ($3::text IS NULL OR job_id = $3)",
                now,
                state.value,
                job_id,
            ),
        )
        return int(status.rpartition(" ")[2])

    async def backlog(self) -> list[Backlog]:
        rows = await self._executor.run(
            "outbox_backlog",
            lambda db: db.fetch(
                "SELECT sink, count(*) AS count, min(coalesce(pending_since, created_at)) AS oldest FROM deliveries"
                " WHERE state = 'pending' GROUP BY sink"
            ),
        )
        return [rows_.backlog(row, rows_.as_stored) for row in rows]

    async def prune_finished(self, before: datetime, limit: int) -> int:
        status = await self._executor.run(
            "outbox_prune",
            lambda db: db.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                " WHERE state = 'delivered' AND updated_at < $1 LIMIT $2)",
                before,
                limit,
            ),
        )
        return int(status.rpartition(" ")[2])
