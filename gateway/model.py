"""The gateway's own data: statuses, normalised events, and jobs as the read API returns them.

These are plain objects passed between the ingest pipeline and the stores; the wire formats of the
backend live in :mod:`gateway.payloads`, validated at the edge and converted once into a :class:`JobEvent`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from litestar.params import KwargDefinition

from gateway.payloads import Metadata

__all__ = (
    "Applied",
    "HistoryEntry",
    "InProgress",
    "Job",
    "JobEvent",
    "JobPage",
    "JobSummary",
    "KindConflict",
    "Outcome",
    "Status",
)


_JsonObjectOrNull = Annotated[
    msgspec.Raw | None,
    # Raw JSON has no schema of its own: without this the OpenAPI document says oneOf [{}, null], which
    # null matches twice (so no response with a null result validates).
    KwargDefinition(schema_extra={"oneOf": [{"type": "object"}, {"type": "null"}]}),
]


class Status(enum.StrEnum):
    """A job's lifecycle, in order; ``completed`` and ``failed`` are terminal."""

    PENDING = "pending"
    INITIALIZING = "initializing"
    GENERATING = "generating"
    SAVING = "saving"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        """Position in the lifecycle; both terminal statuses share the last rank."""
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self is Status.COMPLETED or self is Status.FAILED


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_RANK = {status: min(position, 4) for position, status in enumerate(Status)}


class Outcome(enum.StrEnum):
    """What a webhook did to its job, as answered to the sender."""

    APPLIED = "applied"
    """Recorded in history; moved the job forward or updated its progress."""
    DUPLICATE = "duplicate"
    """Seen before (same ``webhook-id``, or same job, status and timestamp): nothing changed."""
    STALE = "stale"
    """Recorded in history, but behind the job's status (or after a terminal one): the status stays."""


class JobEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook, normalised: what the deduplicator keys on and the job store records."""

    kind: str
    job_id: str
    status: Status
    timestamp: datetime
    """The sender's timestamp for the event, always timezone-aware (UTC when the sender gave no zone)."""
    received_at: datetime
    delivery_id: str | None = None
    """The Standard Webhooks ``webhook-id``, when the request carries one."""
    metadata: Metadata | None = None
    result: msgspec.Raw | None = None
    """The result of a ``completed`` event as JSON (``{"images": [...]}`` or ``{"article": {...}}``)."""
    error_message: str | None = None
    images: int = 0
    """How many images a ``completed`` image event delivered (for the images-per-minute metric)."""

    @property
    def key(self) -> str:
        """Identity of the event itself, so a retry re-signed with a new ``webhook-id`` is still a duplicate."""
        micros = (self.timestamp - _EPOCH) // _MICROSECOND  # exact: floats lose microseconds far from 1970
        return f"{self.kind}:{self.job_id}:{self.status}:{micros}"


class Applied(msgspec.Struct, frozen=True, kw_only=True):
    """The job store's answer to an event."""

    outcome: Outcome
    status: Status
    """The job's status after the event."""
    previous: Status | None = None
    """The job's status before the event (``None`` when the event created the job)."""
    event_id: int | None = None
    """Store-assigned, globally increasing id of the recorded event (``None`` for a duplicate)."""
    moved: bool = False
    """Whether the job's status changed (its first event, or a step forward)."""
    model: str | None = None
    """The job's model name after this event (from this event's metadata or an earlier one's)."""
    first_seen_at: datetime | None = None
    """When the gateway first heard of the job."""


class KindConflict(Exception):
    """The job exists under another kind: its webhooks belong on that kind's route."""

    def __init__(self, job_id: str, kind: str) -> None:
        super().__init__(f"job {job_id!r} is a {kind!r} job")
        self.job_id = job_id
        self.kind = kind


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One distinct event received for a job, in the order received."""

    id: int
    status: Status
    timestamp: datetime
    received_at: datetime
    outcome: Outcome
    stale: bool
    delivery_id: str | None = None
    error_message: str | None = None
    metadata: Metadata | None = None


class JobSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A job as listings return it: its current state without the history."""

    job_id: str
    kind: str
    status: Status
    created_at: datetime
    """When the gateway first heard of the job."""
    updated_at: datetime
    """When an event last changed the job."""
    completed_at: datetime | None = None
    """When the job reached a terminal status."""
    result: _JsonObjectOrNull = None
    """``{"images": [...]}`` or ``{"article": {...}}`` once completed."""
    metadata: Metadata | None = None
    error_message: str | None = None


class Job(JobSummary, frozen=True, kw_only=True):
    """A job as the read API returns it, with every distinct event received for it."""

    history: list[HistoryEntry]


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""

    jobs: list[JobSummary]
    next_cursor: str | None = None


class InProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How many jobs of a kind sit in a non-terminal status, and since when the oldest."""

    kind: str
    status: Status
    count: int
    oldest_created_at: datetime
