"""The outbox on PostgreSQL, shared by every replica.

A claim takes the due head of each job's queue with ``FOR UPDATE SKIP LOCKED`` and leases it (owner and
expiry) in the same statement: two replicas never claim one row, and the rows of a replica that died
mid-delivery are claimed again once their lease expired. Settling a row checks the lease is still ours,
so a replica that lost its lease (stalled past it) cannot overwrite the new owner's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from gateway.outbox import Claimed, DeliveryRecord, OutboxWriter
from gateway.stores import rows as rows_
from gateway.stores.outbox_sql import REPLAYED, SqlOutbox
from gateway.stores.postgres_executor import PostgresExecutor

if TYPE_CHECKING:
    from gateway.model import JobEvent
    from gateway.stores.postgres_executor import Connection

__all__ = ("PostgresOutbox", "enqueue")

_REPLAY = f"{REPLAYED} WHERE id = $2 AND state <> 'pending'"


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


class PostgresOutbox(SqlOutbox[PostgresExecutor]):
    """:class:`~gateway.outbox.Outbox` in the PostgreSQL job store's database."""

    def __init__(self, executor: PostgresExecutor) -> None:
        super().__init__(executor, to_db=rows_.as_stored, from_db=rows_.as_stored)

    async def claim(
        self, owner: str, sinks: Sequence[str], limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        until = now + timedelta(seconds=lease_seconds)
        rows = await self._executor.fetch("outbox_claim", _CLAIM, list(sinks), now, limit, owner, until)
        return [rows_.claimed(row, attempt=row[8]) for row in sorted(rows, key=lambda row: row[0])]

    async def delivered_many(self, row_ids: Sequence[int], owner: str, now: datetime) -> set[int]:
        rows = await self._executor.fetch(
            "outbox_delivered",
            "UPDATE deliveries SET state = 'delivered', delivered_at = $3, last_error = NULL,"
            " lease_owner = NULL, lease_expires_at = NULL, updated_at = $3"
            " WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending' RETURNING id",
            list(row_ids),
            owner,
            now,
        )
        return {row[0] for row in rows}

    async def release_leases(self, owner: str) -> int:
        sql = "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1"
        return await self._executor.execute("outbox_release_leases", sql, owner)

    async def replay(self, row_id: int, now: datetime) -> DeliveryRecord | None:
        async def replay(db: Connection) -> asyncpg.Record | None:
            await db.execute(_REPLAY, now, row_id)
            return await db.fetchrow(f"SELECT {rows_.DELIVERY_COLUMNS} FROM deliveries WHERE id = $1", row_id)  # noqa: S608

        row = await self._executor.run("outbox_replay", replay)
        return rows_.delivery_record(row, rows_.as_stored) if row is not None else None
