"""Rows to records, written once per shape for both databases.

A row is read by position, in the order of the column list beside its mapper (an ``sqlite3`` row and an
``asyncpg.Record`` both index that way). ``moment`` reads a stored timestamp: SQLite keeps ISO-8601 text
(:func:`from_text`), PostgreSQL a ``timestamptz`` that the driver already made a datetime (:func:`as_stored`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import msgspec

from gateway.model import HistoryEntry, InProgress, Outcome, Status, StreamEvent
from gateway.outbox import Backlog, Claimed, Delivery, DeliveryRecord, DeliveryState, DisabledSink
from gateway.stores.queries import decode_context
from gateway.stores.records import decode_metadata

__all__ = (
    "CLAIMED_COLUMNS",
    "DELIVERY_COLUMNS",
    "HISTORY_COLUMNS",
    "JOB_COLUMNS",
    "Moment",
    "Row",
    "as_stored",
    "backlog",
    "claimed",
    "delivery_record",
    "disabled_sink",
    "from_text",
    "history_entry",
    "in_progress",
    "job_fields",
    "stream_event",
)


class Row(Protocol):
    """A row read by position: an ``sqlite3`` row or an ``asyncpg.Record``."""

    def __getitem__(self, index: int, /) -> Any: ...


Moment = Callable[[Any], datetime]


def from_text(stored: str) -> datetime:
    return datetime.fromisoformat(stored)


def as_stored(stored: datetime) -> datetime:
    return stored


def _optional(moment: Moment, stored: Any) -> datetime | None:
    return moment(stored) if stored is not None else None


JOB_COLUMNS = (
    "seq, job_id, kind, status, result, metadata, error_message, created_at, updated_at, completed_at,"
    " user_id, organization_id, registered_at, context"
)


def job_fields(row: Row, moment: Moment) -> dict[str, Any]:
    """The fields of a :class:`~gateway.model.JobSummary` (and a Job, with its history) from a
    :data:`JOB_COLUMNS` row; ``row[0]`` is the job's sequence (the pages' cursor)."""
    return {
        "job_id": row[1],
        "kind": row[2],
        "status": Status(row[3]),
        "result": msgspec.Raw(row[4].encode()) if row[4] is not None else None,
        "metadata": decode_metadata(row[5]),
        "error_message": row[6],
        "created_at": moment(row[7]),
        "updated_at": moment(row[8]),
        "completed_at": _optional(moment, row[9]),
        "user_id": row[10],
        "organization_id": row[11],
        "registered_at": _optional(moment, row[12]),
        "context": decode_context(row[13]),
    }


HISTORY_COLUMNS = "id, status, timestamp, received_at, outcome, delivery_id, error_message, metadata"


def history_entry(row: Row, moment: Moment) -> HistoryEntry:
    return HistoryEntry(
        id=row[0],
        status=Status(row[1]),
        timestamp=moment(row[2]),
        received_at=moment(row[3]),
        outcome=Outcome(row[4]),
        stale=row[4] == Outcome.STALE,
        delivery_id=row[5],
        error_message=row[6],
        metadata=decode_metadata(row[7]),
    )


def stream_event(row: Row, moment: Moment) -> StreamEvent:
    """From an :data:`~gateway.stores.queries.EVENT_COLUMNS` row."""
    return StreamEvent(
        id=row[0],
        job_id=row[1],
        kind=row[2],
        status=Status(row[3]),
        outcome=Outcome(row[4]),
        timestamp=moment(row[5]),
        received_at=moment(row[6]),
        user_id=row[7],
        organization_id=row[8],
    )


def in_progress(row: Row, moment: Moment) -> InProgress:
    """From a ``kind, status, count(*), min(created_at)`` row."""
    return InProgress(kind=row[0], status=Status(row[1]), count=row[2], oldest_created_at=moment(row[3]))


_ROW_HEAD = "id, event_id, sequence, sink, job_id, kind, status"
"""The columns an outbox row's every reading starts with, mapped by :func:`_head`."""


def _head(row: Row) -> dict[str, Any]:
    """The fields of :data:`_ROW_HEAD` but ``sink``, which a claim keeps apart from its delivery."""
    return {"id": row[0], "event_id": row[1], "sequence": row[2], "job_id": row[4], "kind": row[5], "status": row[6]}


DELIVERY_COLUMNS = (
    f"{_ROW_HEAD}, state, attempts, next_attempt_at, last_error, created_at, updated_at, delivered_at, body"
)


def delivery_record(row: Row, moment: Moment) -> DeliveryRecord:
    return DeliveryRecord(
        **_head(row),
        sink=row[3],
        state=DeliveryState(row[7]),
        attempts=row[8],
        next_attempt_at=moment(row[9]),
        last_error=row[10],
        created_at=moment(row[11]),
        updated_at=moment(row[12]),
        delivered_at=_optional(moment, row[13]),
        body=msgspec.Raw(bytes(row[14])),
    )


CLAIMED_COLUMNS = f"{_ROW_HEAD}, body, attempts, traceparent"


def claimed(row: Row, *, attempt: int) -> Claimed:
    """A leased row; ``attempt`` counts this one (the row's ``attempts`` before or after the claim's
    increment, depending on when the database read it)."""
    return Claimed(row[3], Delivery(**_head(row), body=bytes(row[7]), attempt=attempt, traceparent=row[9]))


def backlog(row: Row, moment: Moment) -> Backlog:
    """From a ``sink, count(*), min(coalesce(pending_since, created_at))`` row."""
    return Backlog(sink=row[0], count=row[1], oldest_pending_since=moment(row[2]))


def disabled_sink(row: Row, moment: Moment) -> DisabledSink:
    """From a ``sink, reason, disabled_at`` row."""
    return DisabledSink(sink=row[0], reason=row[1], disabled_at=moment(row[2]))
