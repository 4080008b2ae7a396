"""The outbox on the embedded SQLite file: rows written (:func:`enqueue`) in the transaction that applies
the event; claims and settlements go through the same file's executor, which the job store shares.

SQLite means one gateway process, so leases only matter within it: at start, the leases a crashed
process left behind are freed at once (:meth:`SqliteOutbox.release_leases`) instead of timing out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gateway.outbox import Claimed, DeliveryRecord, OutboxWriter
from gateway.stores import rows as rows_
from gateway.stores.outbox_sql import REPLAYED, SqlOutbox
from gateway.stores.sqlite_executor import SqliteExecutor, numbered
from gateway.timestamps import utc_iso

if TYPE_CHECKING:
    from gateway.model import JobEvent

__all__ = ("SqliteOutbox", "enqueue")


_REPLAY = numbered(f"{REPLAYED} WHERE id = $2 AND state != 'pending'")


def enqueue(
    db: sqlite3.Connection, writer: OutboxWriter, event: JobEvent, sequence: int, traceparent: str | None
) -> None:
    """Write the event's rows, one per sink, inside the job store's transaction; due at once."""
    db.executemany(
        "INSERT INTO deliveries (sequence, event_id, sink, job_id, kind, status, body, traceparent,"
        " next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9)",
        writer.rows([(event, sequence, traceparent)], _iso),
    )


class SqliteOutbox(SqlOutbox[SqliteExecutor]):
    """:class:`~gateway.outbox.Outbox` in the SQLite job store's file."""

    def __init__(self, executor: SqliteExecutor) -> None:
        super().__init__(executor, to_db=_iso, from_db=rows_.from_text)

    async def claim(
        self, owner: str, sinks: Sequence[str], limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        until = _iso(now + timedelta(seconds=lease_seconds))
        claimed: list[Claimed] = await self._executor.run(
            "outbox_claim", lambda db: _claim(db, owner, sinks, limit, until, now)
        )
        return claimed

    async def delivered_many(self, row_ids: Sequence[int], owner: str, now: datetime) -> set[int]:
        kept: set[int] = await self._executor.run(
            "outbox_delivered", lambda db: _delivered_many(db, row_ids, owner, _iso(now))
        )
        return kept

    async def release_leases(self, owner: str | None = None) -> int:
        """Free ``owner``'s leases, or every lease: at start, SQLite means this process is the file's only
        user, so a lease still held is a crashed run's (PostgreSQL's, shared by replicas, only expire)."""
        sql = "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL"
        if owner is None:
            return await self._executor.execute("outbox_release_leases", sql)
        return await self._executor.execute("outbox_release_leases", f"{sql} AND lease_owner = $1", owner)

    async def replay(self, row_id: int, now: datetime) -> DeliveryRecord | None:
        def replay(db: sqlite3.Connection) -> DeliveryRecord | None:
            db.execute(_REPLAY, (_iso(now), row_id))
            row = db.execute(f"SELECT {rows_.DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (row_id,)).fetchone()  # noqa: S608
            return rows_.delivery_record(row, rows_.from_text) if row is not None else None

        record: DeliveryRecord | None = await self._executor.run("outbox_replay", replay)
        return record


def _claim(
    db: sqlite3.Connection, owner: str, sinks: Sequence[str], limit: int, lease_until: str, now: datetime
) -> list[Claimed]:
    """On the writer thread, inside its transaction: the due heads of every job's queue, leased."""
    moment = _iso(now)
    marks = ", ".join("?" * len(sinks))
    rows = db.execute(
        f"SELECT {rows_.CLAIMED_COLUMNS} FROM deliveries d"  # noqa: S608
        f" WHERE state = 'pending' AND sink IN ({marks}) AND next_attempt_at <= ?"
        " AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
        " AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.job_id = d.job_id AND e.sink = d.sink"
        " AND e.state = 'pending' AND e.sequence < d.sequence)"
        " ORDER BY next_attempt_at, id LIMIT ?",
        (*sinks, moment, moment, limit),
    ).fetchall()
    db.executemany(
        "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1 WHERE id = ?",
        [(owner, lease_until, row[0]) for row in rows],
    )
    return [rows_.claimed(row, attempt=row[8] + 1) for row in rows]  # read before the claim counted it


def _delivered_many(db: sqlite3.Connection, row_ids: Sequence[int], owner: str, moment: str) -> set[int]:
    """On the writer thread, inside its transaction: the rows still leased to ``owner`` marked delivered."""
    marks = ", ".join("?" * len(row_ids))
    # "+state": by the rows' ids, not through the index of every pending row the planner would pick otherwise.
    where = f"WHERE id IN ({marks}) AND lease_owner = ? AND +state = 'pending'"
    kept = {row_id for (row_id,) in db.execute(f"SELECT id FROM deliveries {where}", (*row_ids, owner))}  # noqa: S608
    if kept:
        db.execute(
            "UPDATE deliveries SET state = 'delivered', delivered_at = ?, last_error = NULL, lease_owner = NULL,"  # noqa: S608
            f" lease_expires_at = NULL, updated_at = ? {where}",
            (moment, moment, *row_ids, owner),
        )
    return kept


_iso = utc_iso
