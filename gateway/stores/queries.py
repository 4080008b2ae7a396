"""What the read API asks the job stores, and the SQL both backends build from it, so they agree."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from gateway.model import JobContext, JobStats, Status

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("EVENT_COLUMNS", "JobQuery", "decode_context", "events_where", "job_stats", "jobs_where")

EVENT_COLUMNS = "e.id, e.job_id, j.kind, e.status, e.outcome, e.timestamp, e.received_at, j.user_id, j.organization_id"
"""A :class:`~gateway.model.StreamEvent` row: ``job_events e JOIN jobs j``."""

_context_decoder = msgspec.json.Decoder(JobContext)


class JobQuery(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/jobs``: every filter optional; newest first by the job's sequence (a stable order)."""

    kind: str | None = None
    status: Status | None = None
    user_id: str | None = None
    organization_id: str | None = None
    created_after: datetime | None = None
    """Inclusive lower bound on ``created_at``."""
    created_before: datetime | None = None
    """Exclusive upper bound on ``created_at``."""
    cursor: int | None = None
    """The previous page's ``next_cursor``: only jobs older (by sequence) than its last one."""
    limit: int = 50


def jobs_where(
    query: JobQuery, placeholder: Callable[[int], str], moment: Callable[[datetime], object]
) -> tuple[str, list[object]]:
    """The ``WHERE`` clause (or ``""``) of ``query`` over ``jobs``, with its parameters in order.

    ``placeholder(n)`` spells the n-th parameter (``?`` or ``$n``); ``moment`` converts a datetime to
    the column's type (ISO text in SQLite, the value itself in PostgreSQL).
    """
    conditions = (
        ("kind =", query.kind),
        ("status =", query.status.value if query.status is not None else None),
        ("user_id =", query.user_id),
        ("organization_id =", query.organization_id),
        ("created_at >=", moment(query.created_after) if query.created_after is not None else None),
        ("created_at <", moment(query.created_before) if query.created_before is not None else None),
        ("seq <", query.cursor),
    )
    clauses: list[str] = []
    params: list[object] = []
    for column, value in conditions:
        if value is not None:
            params.append(value)
            clauses.append(f"{column} {placeholder(len(params))}")
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def events_where(
    after: int, job_id: str | None, user_id: str | None, placeholder: Callable[[int], str]
) -> tuple[str, list[object]]:
    """The ``WHERE`` clause of a live stream's read: events after ``after``, of one job or one user."""
    clauses = [f"e.id > {placeholder(1)}"]
    params: list[object] = [after]
    for column, value in (("e.job_id =", job_id), ("j.user_id =", user_id)):
        if value is not None:
            params.append(value)
            clauses.append(f"{column} {placeholder(len(params))}")
    return f"WHERE {' AND '.join(clauses)}", params


def decode_context(text: str | None) -> JobContext | None:
    return _context_decoder.decode(text) if text is not None else None


def job_stats(since: datetime, until: datetime, created: dict[str, int], finished: dict[str, int]) -> JobStats:
    """The stats answer from two counts by status: jobs created in the window, jobs finished in it.

    A canceled job is neither a success nor a failure of generation: it is left out of the ratio.
    """
    completed = finished.get(Status.COMPLETED.value, 0)
    failed = finished.get(Status.FAILED.value, 0)
    return JobStats(
        since=since,
        until=until,
        created=created,
        completed=completed,
        failed=failed,
        canceled=finished.get(Status.CANCELED.value, 0),
        failure_ratio=failed / (completed + failed) if completed + failed else None,
    )
