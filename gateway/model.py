"""The gateway's own data: statuses, normalised events, and jobs as the read API returns them.

These are plain objects passed between the ingest pipeline and the stores; the wire formats of the
backend live in :mod:`gateway.payloads`, validated at the edge and converted once into a :class:`JobEvent`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar.params import KwargDefinition

from gateway.payloads import Metadata

__all__ = (
    "DeliveryConflict",
    "EventRefused",
    "EventResult",
    "HistoryEntry",
    "InProgress",
    "Job",
    "JobContext",
    "JobEvent",
    "JobPage",
    "JobStats",
    "JobSummary",
    "KindConflict",
    "Outcome",
    "OwnerConflict",
    "Status",
    "StoreUnavailable",
    "StreamEvent",
    "Unregistered",
)


_JsonObjectOrNull = Annotated[
    msgspec.Raw | None,
    # Raw JSON has no schema of its own: without this the OpenAPI document says oneOf [{}, null], which
    # null matches twice (so no response with a null result validates).
    KwargDefinition(schema_extra={"oneOf": [{"type": "object"}, {"type": "null"}]}),
]


class Status(enum.StrEnum):
    """A job's lifecycle, in order; ``completed``, ``failed`` and ``canceled`` are terminal.

    ``canceled`` is a user's or a provider's cancellation: the job ended, but its generation neither
    succeeded nor failed (it counts on neither side of the failed-generation ratio).
    """

    PENDING = "pending"
    INITIALIZING = "initializing"
    GENERATING = "generating"
    SAVING = "saving"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def rank(self) -> int:
        """Position in the lifecycle; the terminal statuses share the last rank."""
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_RANK = {status: min(position, 4) for position, status in enumerate(Status)}
_TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELED)
"""A tuple: ``in`` compares members by identity first, and never reaches Enum's Python-level hash."""


class Outcome(enum.StrEnum):
    """What a webhook did to its job, as answered to the sender."""

    APPLIED = "applied"
    """Recorded in history; moved the job forward or updated its progress."""
    DUPLICATE = "duplicate"
    """Seen before (same ``webhook-id``, or same job, status and timestamp): nothing changed."""
    STALE = "stale"
    """Recorded in history, but behind the job's status (or after a terminal one): the status stays."""
    IGNORED = "ignored"
    """A provider's callback of an event type or status the gateway does not map: acknowledged (so the
    provider stops retrying), recorded nowhere."""


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
    sender: str | None = None
    """The sender that posted it, when senders are declared: the job belongs to the first one that posts
    for it (``None``: nobody claims the job, as without a senders file)."""

    @property
    def key(self) -> str:
        """Identity of the event itself, so a retry re-signed with a new ``webhook-id`` is still a duplicate."""
        micros = (self.timestamp - _EPOCH) // _MICROSECOND  # exact: floats lose microseconds far from 1970
        return f"{self.kind}:{self.job_id}:{self.status}:{micros}"


class EventResult(msgspec.Struct, frozen=True, kw_only=True):
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


class EventRefused(Exception):
    """An event the job store refused before writing anything: the other writes of its batch go on."""


class KindConflict(EventRefused):
    """The job exists under another kind: its webhooks belong on that kind's route."""

    def __init__(self, job_id: str, kind: str) -> None:
        super().__init__(f"job {job_id!r} is of kind {kind!r}")
        self.job_id = job_id
        self.kind = kind


class OwnerConflict(EventRefused):
    """The job belongs to another sender (the first that posted for it): this one's webhook changes nothing."""

    def __init__(self, job_id: str, owner: str) -> None:
        super().__init__(f"job {job_id!r} belongs to sender {owner!r}")
        self.job_id = job_id
        self.owner = owner


class DeliveryConflict(EventRefused):
    """The ``webhook-id`` is recorded already, for another job's event: a sender reusing an id, never a
    retry of this event (whose key names its job). Refused with 409 naming ``job_id``, the job it is
    recorded for; nothing changes."""

    def __init__(self, delivery_id: str, job_id: str) -> None:
        super().__init__(f"webhook-id {delivery_id!r} is recorded for job {job_id!r}")
        self.delivery_id = delivery_id
        self.job_id = job_id


class Unregistered(EventRefused):
    """``GATEWAY_REQUIRE_REGISTERED_JOBS`` is on and the app never registered this job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} is not registered")
        self.job_id = job_id


class StoreUnavailable(Exception):
    """A store could not answer (unreachable, timed out, failing): the webhook is refused with 503, never
    half-applied, so the sender's retry is safe."""

    def __init__(self, store: str, operation: str) -> None:
        super().__init__(f"{store} store failed during {operation}")
        self.store = store
        self.operation = operation


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


class JobContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the app said about a job when it registered it (``POST /api/jobs``): the seed's
    ``ImageGeneration`` fields; every one optional, since a blog job has no image size."""

    prompt: str | None = None
    num_images: int | None = None
    size: str | None = None
    format: str | None = None
    style: str | None = None
    quality: str | None = None
    metadata: dict[str, Any] | None = None
    """Free-form, the app's own (distinct from the backend's ``metadata`` of the job)."""


class JobSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A job as listings return it: its current state without the history."""

    job_id: str
    kind: str
    status: Status
    """``pending`` for a registered job the backend has not reported on yet."""
    created_at: datetime
    """When the gateway first heard of the job (its registration or its first webhook)."""
    updated_at: datetime
    """When an event last changed the job."""
    completed_at: datetime | None = None
    """When the job reached a terminal status."""
    result: _JsonObjectOrNull = None
    """``{"images": [...]}`` or ``{"article": {...}}`` once completed."""
    metadata: Metadata | None = None
    error_message: str | None = None
    user_id: str | None = None
    """From the job's registration; ``None`` for a job only its webhooks told us about."""
    organization_id: str | None = None
    registered_at: datetime | None = None
    """When the app registered the job (``None``: never registered)."""
    context: JobContext | None = None


class Job(JobSummary, frozen=True, kw_only=True):
    """A job as the read API returns it, with every distinct event received for it."""

    history: list[HistoryEntry]


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""

    jobs: list[JobSummary]
    next_cursor: str | None = None


class StreamEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event as the live streams send it (``data:`` of an SSE message): the history entry
    with the job's identity, so a client following every job needs no second request."""

    id: int
    """The event's global id, also the SSE ``id:``: resume after it with ``Last-Event-ID``."""
    job_id: str
    kind: str
    status: Status
    """The status this event reported (``outcome`` says whether the job took it)."""
    outcome: Outcome
    timestamp: datetime
    received_at: datetime
    user_id: str | None = None
    organization_id: str | None = None


class JobStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts over a window, for a status page that has no Prometheus."""

    since: datetime
    until: datetime
    created: dict[str, int]
    """Jobs first heard of in the window, by their current status (every status present, 0 included)."""
    completed: int
    """Jobs that reached ``completed`` in the window."""
    failed: int
    """Jobs that reached ``failed`` in the window."""
    canceled: int
    """Jobs that reached ``canceled`` in the window: counted on neither side of ``failure_ratio``."""
    failure_ratio: float | None
    """``failed / (completed + failed)``; ``None`` when no job completed or failed in the window."""


class InProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How many jobs of a kind sit in a non-terminal status, and since when the oldest."""

    kind: str
    status: Status
    count: int
    oldest_created_at: datetime
