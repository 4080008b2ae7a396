"""The outbox: what the job stores write beside an applied event, and what the dispatcher and the API read.

The job store writes one row per enabled sink in the transaction that applies the event (see
:class:`OutboxWriter`), so an acknowledged webhook is never lost for delivery, even across a crash. The
event's stable id is ``evt_<sequence>``, ``sequence`` being the event's global id in ``job_events``: a
retry or a replay sends the same id, so the app deduplicates. The :class:`Outbox` protocol is
implemented per database in :mod:`gateway.stores.sqlite_outbox` and :mod:`gateway.stores.postgres_outbox`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import msgspec
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.model import JobEvent
from gateway.payloads import Metadata

__all__ = (
    "Backlog",
    "Claimed",
    "Delivery",
    "DeliveryPage",
    "DeliveryRecord",
    "DeliveryState",
    "DisabledSink",
    "ForwardedEvent",
    "Outbox",
    "OutboxWriter",
    "current_traceparent",
    "event_body",
    "event_id",
)

_encode = msgspec.json.Encoder().encode
Row = tuple[Any, ...]
_propagator = TraceContextTextMapPropagator()


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt to deliver one applied event to one sink."""

    id: int
    """The outbox row's id (one row per event and sink)."""
    event_id: str
    """The event's stable id (``evt_<sequence>``): the ``webhook-id`` / ``Nats-Msg-Id``, so receivers
    deduplicate across retries and replays."""
    sequence: int
    """The event's global id in ``job_events``: increasing in the order events were applied."""
    job_id: str
    kind: str
    status: str
    body: bytes
    """The normalised event JSON, exactly what is sent."""
    attempt: int
    """1 for the first attempt."""
    traceparent: str | None
    """The W3C ``traceparent`` of the webhook that caused the event, to link the delivery's span to it."""


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    """Waiting for its first attempt, a retry, or an earlier event of its job."""
    DELIVERED = "delivered"
    DEAD = "dead"
    """Refused for good (another 4xx) or out of retries: waits for a replay."""


class ForwardedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The normalised event as sinks send it (the HTTP body, the NATS message)."""

    event_id: str
    """The same as the ``webhook-id`` header: stable across retries and replays."""
    sequence: int
    """Increasing in the order events were applied: a replayed event keeps its own."""
    job_id: str
    kind: str
    status: str
    timestamp: datetime
    """The backend's timestamp for the event."""
    received_at: datetime
    """When the gateway received the webhook."""
    result: msgspec.Raw | None = None
    metadata: Metadata | None = None
    error_message: str | None = None


def event_id(sequence: int) -> str:
    return f"evt_{sequence}"


def event_body(event: JobEvent, sequence: int) -> bytes:
    return _encode(
        ForwardedEvent(
            event_id=event_id(sequence),
            sequence=sequence,
            job_id=event.job_id,
            kind=event.kind,
            status=event.status.value,
            timestamp=event.timestamp,
            received_at=event.received_at,
            result=event.result,
            metadata=event.metadata,
            error_message=event.error_message,
        )
    )


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (the webhook's request), to link deliveries to it."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


class OutboxWriter:
    """What a job store needs to write outbox rows: the enabled sinks and the statuses to forward.

    A job store given none writes nothing (forwarding off costs the ingest path nothing).
    """

    __slots__ = ("_statuses", "on_written", "sinks")

    def __init__(self, sinks: Sequence[str], statuses: frozenset[str] | None) -> None:
        self.sinks = tuple(sinks)
        self._statuses = statuses
        self.on_written: Callable[[], None] = _nothing
        """Called on the event loop once rows are committed: the dispatcher wakes up."""

    def sinks_for(self, event: JobEvent) -> tuple[str, ...]:
        """The sinks an applied ``event`` goes to (none when its status is not forwarded)."""
        if self._statuses is not None and event.status.value not in self._statuses:
            return ()
        return self.sinks

    def rows(self, applied: Iterable[tuple[JobEvent, int, str | None]], moment: Callable[[datetime], Any]) -> list[Row]:
        """The outbox rows of applied events (each with its sequence and traceparent), one per event and
        sink: ``sequence, event_id, sink, job_id, kind, status, body, traceparent, received`` in the
        order of the INSERT both databases run; ``moment`` stores the event's ``received_at``."""
        rows: list[Row] = []
        for event, sequence, traceparent in applied:
            sinks = self.sinks_for(event)
            if not sinks:
                continue
            body = event_body(event, sequence)
            received = moment(event.received_at)
            shared = (event.job_id, event.kind, event.status.value, body, traceparent, received)
            rows += [(sequence, event_id(sequence), sink, *shared) for sink in sinks]
        return rows


def _nothing() -> None:
    return None


class Claimed(NamedTuple):
    """A row the dispatcher leased: the sink it goes to and what to send."""

    sink: str
    delivery: Delivery


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An outbox row as the API and the CLI show it."""

    id: int
    event_id: str
    sequence: int
    sink: str
    job_id: str
    kind: str
    status: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    body: msgspec.Raw
    """The event exactly as sent."""


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    """Deliveries newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""

    deliveries: list[DeliveryRecord]
    next_cursor: str | None = None


class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    """Pending rows of one sink, and since when the oldest has been pending (written, or replayed)."""

    sink: str
    count: int
    oldest_pending_since: datetime


class DisabledSink(msgspec.Struct, frozen=True, kw_only=True):
    sink: str
    reason: str
    disabled_at: datetime


class Outbox(Protocol):
    """The outbox rows: leased by dispatchers (on any replica), listed and replayed by operators.

    Every method raises :class:`~gateway.stores.base.StoreUnavailable` when the database cannot answer.
    Methods that settle a lease take the ``owner`` that claimed it and answer ``False`` (changing
    nothing) when the lease was lost meanwhile (expired and taken over by another dispatcher).
    """

    async def claim(
        self, owner: str, sinks: Sequence[str], limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        """Lease up to ``limit`` due rows, each the oldest pending row of its job and sink."""
        ...

    async def delivered(self, row_id: int, owner: str, now: datetime) -> bool: ...

    async def delivered_many(self, row_ids: Sequence[int], owner: str, now: datetime) -> set[int]:
        """Settle the rows of ``row_ids`` as delivered in one statement, as :meth:`delivered` settles one;
        answer the ids whose lease was still ``owner``'s (the others are left unchanged)."""
        ...

    async def retry(self, row_id: int, owner: str, at: datetime, error: str, now: datetime) -> bool: ...

    async def dead(self, row_id: int, owner: str, error: str, now: datetime) -> bool: ...

    async def release(self, row_id: int, owner: str, error: str, now: datetime) -> bool:
        """Give the row back untried (its attempt not counted): its sink was disabled."""
        ...

    async def release_leases(self, owner: str) -> int:
        """Free ``owner``'s leases (a dispatcher stopping with deliveries cut off), so another dispatcher
        takes the rows at once instead of after the lease; return how many."""
        ...

    async def disable_sink(self, sink: str, reason: str, now: datetime) -> None: ...

    async def enable_sink(self, sink: str) -> bool:
        """Re-enable ``sink``; ``False`` if it was not disabled."""
        ...

    async def disabled_sinks(self) -> list[DisabledSink]: ...

    async def list_deliveries(
        self, *, state: DeliveryState | None, job_id: str | None, limit: int, cursor: int | None
    ) -> DeliveryPage: ...

    async def replay(self, row_id: int, now: datetime) -> DeliveryRecord | None:
        """Put a dead or delivered row back to pending, due now, with its event id and sequence;
        ``None`` if there is no such row. A pending row is left as it is."""
        ...

    async def replay_all(self, state: DeliveryState, job_id: str | None, now: datetime) -> int:
        """Replay every row in ``state`` (of ``job_id``, if given); return how many."""
        ...

    async def backlog(self) -> list[Backlog]: ...

    async def prune_finished(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` delivered rows last updated before ``before``; return how many (the
        retention job calls it until it returns less than ``limit``). Dead letters stay: they are events
        the app never got, until an operator replays them."""
        ...
