"""Row helpers every job store shares: metadata merging and JSON columns, so backends agree byte for byte."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from gateway.model import Applied, Outcome
from gateway.payloads import Metadata
from gateway.transition import Transition

if TYPE_CHECKING:
    from datetime import datetime

    from gateway.model import JobEvent, Status

__all__ = ("answer", "decode_metadata", "merge_metadata", "to_json")

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_metadata_decoder = msgspec.json.Decoder(Metadata)


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
    return _metadata_decoder.decode(text) if text is not None else None


def answer(
    event: JobEvent,
    transition: Transition,
    previous: Status | None,
    event_id: int | None,
    metadata: Metadata | None,
    first_seen_at: datetime,
) -> Applied:
    """A job store's answer for an event it recorded: built here so every backend answers alike."""
    if transition is Transition.CONTRADICTED:
        logger.warning(
            "job %s got %s after terminal %s: kept in history as stale (a backend bug?)",
            event.job_id,
            event.status,
            previous,
        )
    status = event.status if transition.outcome is Outcome.APPLIED else previous
    assert status is not None  # a job without a previous status is created by this event
    return Applied(
        outcome=transition.outcome,
        status=status,
        previous=previous,
        event_id=event_id,
        moved=transition.moves,
        model=metadata.model_name if metadata is not None else None,
        first_seen_at=first_seen_at,
    )
