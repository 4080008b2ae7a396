"""The outbox on the embedded SQLite file: rows written (:func:`enqueue`) in the transaction that applies
the event; claims and settlements go through the same file's executor, which the job store shares.

SQLite means one gateway process, so leases only matter within it: at start, the leases a crashed
process left behind are freed at once (:meth:`SqliteOutbox.release_leases`) instead of timing out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

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
from gateway.stores.sqlite_executor import SqliteExecutor

if TYPE_CHECKING:
    from gateway.model import JobEvent

__all__ = ("SqliteOutbox", "enqueue")


_PENDING = DeliveryState.PENDING.value
_DELIVERED = DeliveryState.DELIVERED.value
_DEAD = DeliveryState.DEAD.value


def enqueue(
    db: sqlite3.Connection, writer: OutboxWriter, event: JobEvent, sequence: int, traceparent: str | None
) -> None:
    """Write the event's rows, one per sink, inside the job store's transaction; due at once."""
    db.executemany(
        "INSERT INTO deliveries (sequence, event_id, sink, job_id, kind, status, body, traceparent,"
        " next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9)",
        writer.rows([(event, sequence, traceparent)], _iso),
    )


class SqliteOutbox:
    """:class:`~gateway.outbox.Outbox` in the SQLite job store's file."""

    def __init__(self, executor: SqliteExecutor) -> None:
        self._executor = executor

    async def claim(
        self, owner: str, sinks: Sequence[str], limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        until = _iso(now + timedelta(seconds=lease_seconds))
        claimed: list[Claimed] = await self._executor.run(
            "outbox_claim", lambda db: _claim(db, owner, sinks, limit, until, now)
        )
        return claimed

    async def delivered(self, row_id: int, owner: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_delivered",
            "state = ?, delivered_at = ?, last_error = NULL",
            (_DELIVERED, _iso(now)),
            row_id,
            owner,
            now,
        )

    async def delivered_many(self, row_ids: Sequence[int], owner: str, now: datetime) -> set[int]:
        kept: set[int] = await self._executor.run(
            "outbox_delivered", lambda db: _delivered_many(db, row_ids, owner, _iso(now))
        )
        return kept

    async def retry(self, row_id: int, owner: str, at: datetime, error: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_retry", "next_attempt_at = ?, last_error = ?", (_iso(at), error), row_id, owner, now
        )

    async def dead(self, row_id: int, owner: str, error: str, now: datetime) -> bool:
        return await self._settle("outbox_dead", "state = ?, last_error = ?", (_DEAD, error), row_id, owner, now)

    async def release(self, row_id: int, owner: str, error: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_release", "attempts = attempts - 1, last_error = ?", (error,), row_id, owner, now
        )

    async def _settle(
        self, operation: str, assignments: str, values: tuple[Any, ...], row_id: int, owner: str, now: datetime
    ) -> bool:
        sql = (
            f"UPDATE deliveries SET {assignments}, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"  # noqa: S608
            " WHERE id = ? AND lease_owner = ? AND state = 'pending'"
        )
        changed: int = await self._executor.run(
            operation, lambda db: db.execute(sql, (*values, _iso(now), row_id, owner)).rowcount
        )
        return changed == 1

    async def release_leases(self, owner: str | None = None) -> int:
        """Free ``owner``'s leases, or every lease: at start, SQLite means this process is the file's only
        user, so a lease still held is a crashed run's (PostgreSQL's, shared by replicas, only expire)."""
        sql = "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL"
        params: tuple[str, ...] = ()
        if owner is not None:
            sql += " AND lease_owner = ?"
            params = (owner,)
        changed: int = await self._executor.run("outbox_release_leases", lambda db: db.execute(sql, params).rowcount)
        return changed

    async def disable_sink(self, sink: str, reason: str, now: datetime) -> None:
        await self._executor.run(
            "outbox_disable",
            lambda db: db.execute(
                "INSERT INTO delivery_sinks_disabled (sink, reason, disabled_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sink) DO UPDATE SET reason = excluded.reason, disabled_at = excluded.disabled_at",
                (sink, reason, _iso(now)),
            ),
        )

    async def enable_sink(self, sink: str) -> bool:
        changed: int = await self._executor.run(
            "outbox_enable",
            lambda db: db.execute("DELETE FROM delivery_sinks_disabled WHERE sink = ?", (sink,)).rowcount,
        )
        return changed == 1

    async def disabled_sinks(self) -> list[DisabledSink]:
        rows = await self._executor.run(
            "outbox_disabled",
            lambda db: db.execute("SELECT sink, reason, disabled_at FROM delivery_sinks_disabled").fetchall(),
            write=False,
        )
        return [rows_.disabled_sink(row, rows_.from_text) for row in rows]

    async def list_deliveries(
        self, *, state: DeliveryState | None, job_id: str | None, limit: int, cursor: int | None
    ) -> DeliveryPage:
        page: DeliveryPage = await self._executor.run(
            "outbox_list", lambda db: _list(db, state, job_id, limit, cursor), write=False
        )
        return page

    async def replay(self, row_id: int, now: datetime) -> DeliveryRecord | None:
        def replay(db: sqlite3.Connection) -> DeliveryRecord | None:
            db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?,"
                " pending_since = ?, delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND state != 'pending'",
                (_iso(now), _iso(now), _iso(now), row_id),
            )
            row = db.execute(f"SELECT {rows_.DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (row_id,)).fetchone()  # noqa: S608
            return rows_.delivery_record(row, rows_.from_text) if row is not None else None

        record: DeliveryRecord | None = await self._executor.run("outbox_replay", replay)
        return record

    async def replay_all(self, state: DeliveryState, job_id: str | None, now: datetime) -> int:
        sql = (
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?,"
            " pending_since = ?, delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE state = ?"
        )
        params: tuple[Any, ...] = (_iso(now), _iso(now), _iso(now), state.value)
        if job_id is not None:
            sql += " AND job_id = ?"
            params += (job_id,)
        changed: int = await self._executor.run("outbox_replay_all", lambda db: db.execute(sql, params).rowcount)
        return changed

    async def backlog(self) -> list[Backlog]:
        rows = await self._executor.run(
            "outbox_backlog",
            lambda db: db.execute(
                "SELECT sink, count(*), min(coalesce(pending_since, created_at)) FROM deliveries"
                " WHERE state = 'pending' GROUP BY sink"
            ).fetchall(),
            write=False,
        )
        return [rows_.backlog(row, rows_.from_text) for row in rows]

    async def prune_finished(self, before: datetime, limit: int) -> int:
        changed: int = await self._executor.run(
            "outbox_prune",
            lambda db: (
                db.execute(
                    "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                    " WHERE state = 'delivered' AND updated_at < ? LIMIT ?)",
                    (_iso(before), limit),
                ).rowcount
            ),
        )
        return changed


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
            f"UPDATE deliveries SET state = ?, delivered_at = ?, last_error = NULL, lease_owner = NULL,"  # noqa: S608
            f" lease_expires_at = NULL, updated_at = ? {where}",
            (_DELIVERED, moment, moment, *row_ids, owner),
        )
    return kept


def _list(
    db: sqlite3.Connection, state: DeliveryState | None, job_id: str | None, limit: int, cursor: int | None
) -> DeliveryPage:
    clauses, params = [], []
    for clause, value in (("state = ?", state and state.value), ("job_id = ?", job_id), ("id < ?", cursor)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = db.execute(
        f"SELECT {rows_.DELIVERY_COLUMNS} FROM deliveries {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryPage(
        deliveries=[rows_.delivery_record(row, rows_.from_text) for row in rows],
        next_cursor=str(rows[-1][0]) if more else None,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
