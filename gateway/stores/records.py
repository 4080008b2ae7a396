"""Row helpers every job store shares: metadata merging and JSON columns, so backends agree byte for byte."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from gateway.model import DeliveryConflict, EventResult, OwnerConflict, Status
from gateway.payloads import Metadata
from gateway.transition import Transition

if TYPE_CHECKING:
    from datetime import datetime

    from gateway.model import JobEvent

__all__ = (
    "answer",
    "decode_metadata",
    "delivery_conflict",
    "merge_metadata",
    "owner_conflict",
    "recorded_status",
    "to_json",
)

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_CONTRADICTED = Transition.CONTRADICTED  # read once: an Enum class attribute goes through EnumType.__getattr__'s hook


class _StoredMetadata(msgspec.Struct, frozen=True):
    """Metadata as a store holds it, read without the payload's bounds: a row recorded before a bound
    existed (or was tightened) must stay readable, not fail every read of its job."""

    model_name: str | None = None
    generation_time_seconds: float | None = None


_metadata_decoder = msgspec.json.Decoder(_StoredMetadata)


def merge_metadata(stored: Metadata | None, incoming: Metadata | None) -> Metadata | None:
    """Fields the event carries override the stored ones; fields it leaves out are kept."""
    if incoming is None or stored is None:
        return incoming or stored
    return Metadata(
        model_name=incoming.model_name or stored.model_name,
        generation_time_seconds=(
            incoming.generation_time_seconds
            if incoming.generation_time_seconds is not None
            else stored.generation_time_seconds
        ),
    )


def to_json(value: object) -> str | None:
    """A JSON text column (``None`` stays SQL ``NULL``)."""
    return _encode(value).decode() if value is not None else None


def decode_metadata(text: str | None) -> Metadata | None:
    """A JSON column written by :func:`to_json`, as :class:`Metadata` (built as stored: not re-validated)."""
    if text is None:
        return None
    stored = _metadata_decoder.decode(text)
    return Metadata(model_name=stored.model_name, generation_time_seconds=stored.generation_time_seconds)


def answer(
    event: JobEvent,
    transition: Transition,
    previous: Status | None,
    event_id: int | None,
    metadata: Metadata | None,
    first_seen_at: datetime,
) -> EventResult:
    """A job store's answer for an event it recorded: built here so every backend answers alike."""
    if transition is _CONTRADICTED:
        logger.warning(
            "job %s got %s after terminal %s: kept in history as stale (a backend bug?)",
            event.job_id,
            event.status,
            previous,
        )
    outcome = transition.outcome
    status = event.status if transition.applies else previous
    assert status is not None  # a job without a previous status is created by this event
    return EventResult(
        outcome=outcome,
        status=status,
        previous=previous,
        event_id=event_id,
        moved=transition.moves,
        model=metadata.model_name if metadata is not None else None,
        first_seen_at=first_seen_at,
    )


def owner_conflict(event: JobEvent, owner: str | None) -> OwnerConflict | None:
    """The refusal of ``event`` when its job belongs to another sender (``owner``, ``None``: nobody yet)."""
    if event.sender is None or owner is None or owner == event.sender:
        return None
    return OwnerConflict(event.job_id, owner)


def delivery_conflict(event: JobEvent, key_known: bool, delivery_job: str | None) -> DeliveryConflict | None:
    """The refusal of ``event`` when its ``delivery_id`` is recorded for another job (``delivery_job``) and
    the event itself (``key_known``) is not: a reused ``webhook-id``, never a retry of this event."""
    if key_known or delivery_job is None or delivery_job == event.job_id or event.delivery_id is None:
        return None
    return DeliveryConflict(event.delivery_id, delivery_job)


def recorded_status(event: JobEvent, status: str | None, key_known: bool, delivery_job: str | None) -> Status | None:
    """:meth:`JobStore.recorded`'s answer from what the store holds: the job's ``status`` (the event's own
    when the job is gone), ``None`` when neither the event's key nor its ``delivery_id`` is recorded.

    Raises :class:`DeliveryConflict` for a ``delivery_id`` recorded for another job."""
    conflict = delivery_conflict(event, key_known, delivery_job)
    if conflict is not None:
        raise conflict
    if not key_known and delivery_job is None:
        return None
    return Status(status) if status is not None else event.status
