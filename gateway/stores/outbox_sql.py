"""The outbox calls whose statements both databases run alike, written once on a database's executor.

``sql`` below numbers its parameters as PostgreSQL does (``$1``); SQLite's executor reads them as its
own. :mod:`gateway.stores.postgres_outbox` and :mod:`gateway.stores.sqlite_outbox` add what each database
does its own way: the claim, freeing leases, a replay's two statements, and the rows written with an
event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from gateway.outbox import Backlog, DeliveryPage, DeliveryState, DisabledSink
from gateway.stores import rows as rows_

__all__ = ("REPLAYED", "SqlOutbox", "Statements")


class Statements(Protocol):
    """A database's executor as the outbox runs statements on it."""

    async def execute(self, operation: str, sql: str, *params: Any) -> int:
        """Run one statement; the number of rows it wrote."""
        ...

    async def fetch(self, operation: str, sql: str, *params: Any) -> Sequence[rows_.Row]:
        """Run one query; its rows."""
        ...


Executor = TypeVar("Executor", bound=Statements)

REPLAYED = (
    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1,"
    " pending_since = $1, delivered_at = NULL, lease_owner = NULL, lease_expires_at = NULL"
)
"""A replay's assignments, ``$1`` being the moment: the row is due again, its attempts counted afresh."""


class SqlOutbox(Generic[Executor]):
    """:class:`~gateway.outbox.Outbox` calls on ``executor``; ``to_db`` writes a moment as the database
    stores it, ``from_db`` reads one back."""

    def __init__(self, executor: Executor, *, to_db: Callable[[datetime], Any], from_db: rows_.Moment) -> None:
        self._executor = executor
        self._to_db = to_db
        self._from_db = from_db

    async def delivered(self, row_id: int, owner: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_delivered", "state = 'delivered', delivered_at = $4, last_error = NULL", row_id, owner, now, now
        )

    async def retry(self, row_id: int, owner: str, at: datetime, error: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_retry", "next_attempt_at = $4, last_error = $5", row_id, owner, now, at, error
        )

    async def dead(self, row_id: int, owner: str, error: str, now: datetime) -> bool:
        return await self._settle("outbox_dead", "state = 'dead', last_error = $4", row_id, owner, now, error)

    async def release(self, row_id: int, owner: str, error: str, now: datetime) -> bool:
        return await self._settle(
            "outbox_release", "attempts = attempts - 1, last_error = $4", row_id, owner, now, error
        )

    async def _settle(
        self, operation: str, assignments: str, row_id: int, owner: str, now: datetime, *values: Any
    ) -> bool:
        """Apply ``assignments`` (whose parameters from ``$4`` are ``values``) to the row and free its
        lease, if the row is pending and still leased to ``owner``; whether it was."""
        sql = (
            f"UPDATE deliveries SET {assignments}, lease_owner = NULL, lease_expires_at = NULL, updated_at = $3"  # noqa: S608
            " WHERE id = $1 AND lease_owner = $2 AND state = 'pending'"
        )
        stored = [self._to_db(value) if isinstance(value, datetime) else value for value in values]
        return await self._executor.execute(operation, sql, row_id, owner, self._to_db(now), *stored) == 1

    async def disable_sink(self, sink: str, reason: str, now: datetime) -> None:
        await self._executor.execute(
            "outbox_disable",
            "INSERT INTO delivery_sinks_disabled (sink, reason, disabled_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (sink) DO UPDATE SET reason = excluded.reason, disabled_at = excluded.disabled_at",
            sink,
            reason,
            self._to_db(now),
        )

    async def enable_sink(self, sink: str) -> bool:
        sql = "DELETE FROM delivery_sinks_disabled WHERE sink = $1"
        return await self._executor.execute("outbox_enable", sql, sink) == 1

    async def disabled_sinks(self) -> list[DisabledSink]:
        sql = "SELECT sink, reason, disabled_at FROM delivery_sinks_disabled"
        return [rows_.disabled_sink(row, self._from_db) for row in await self._executor.fetch("outbox_disabled", sql)]

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
        rows = await self._executor.fetch("outbox_list", sql, *params)
        more = len(rows) > limit
        rows = rows[:limit]
        return DeliveryPage(
            deliveries=[rows_.delivery_record(row, self._from_db) for row in rows],
            next_cursor=str(rows[-1][0]) if more else None,
        )

    async def replay_all(self, state: DeliveryState, job_id: str | None, now: datetime) -> int:
        sql = f"{REPLAYED} WHERE state = $2"
        params: list[object] = [self._to_db(now), state.value]
        if job_id is not None:
            sql += " AND job_id = $3"
            params.append(job_id)
        return await self._executor.execute("outbox_replay_all", sql, *params)

    async def backlog(self) -> list[Backlog]:
        sql = (
            "SELECT sink, count(*) AS count, min(coalesce(pending_since, created_at)) AS oldest FROM deliveries"
            " WHERE state = 'pending' GROUP BY sink"
        )
        return [rows_.backlog(row, self._from_db) for row in await self._executor.fetch("outbox_backlog", sql)]

    async def prune_finished(self, before: datetime, limit: int) -> int:
        sql = (
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
            " WHERE state = 'delivered' AND updated_at < $1 LIMIT $2)"
        )
        return await self._executor.execute("outbox_prune", sql, self._to_db(before), limit)
