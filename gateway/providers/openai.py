"""OpenAI's webhook events as job events.

OpenAI signs with Standard Webhooks headers and a ``whsec_`` secret
(https://developers.openai.com/api/docs/guides/webhooks). An event is ``{"id": "evt_...", "object":
"event", "type": ..., "created_at": <unix seconds>, "data": {"id": ...}}``
(https://developers.openai.com/api/docs/api-reference/webhook-events): ids only, so a job it completes
has no result. The job id is ``data.id`` (the response, batch, fine-tuning job or eval run).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from gateway.ids import JobId
from gateway.model import JobEvent, Status
from gateway.providers.common import Ignored, event

__all__ = ("OBJECTS", "OUTCOMES", "to_event")

OBJECTS = ("response", "batch", "fine_tuning.job", "eval.run")
"""The event types' prefixes whose events are jobs."""
OUTCOMES: dict[str, Status] = {
    "completed": Status.COMPLETED,
    "succeeded": Status.COMPLETED,
    "failed": Status.FAILED,
    "expired": Status.FAILED,
    "cancelled": Status.CANCELED,
    "canceled": Status.CANCELED,
    "incomplete": Status.FAILED,
}
"""The event types' last word and the job status each becomes (``incomplete``: responses only)."""
_INCOMPLETE = "response.incomplete"


class _Type(msgspec.Struct, frozen=True):
    type: str


class _Data(msgspec.Struct, frozen=True):
    id: JobId


class _Event(msgspec.Struct, frozen=True):
    id: str
    type: str
    created_at: int
    data: _Data


_decode_type = msgspec.json.Decoder(_Type).decode
_decode = msgspec.json.Decoder(_Event).decode


def to_event(
    body: bytes, *, kind: str, with_images: bool, received_at: datetime, delivery_id: str | None, timestamp: datetime
) -> JobEvent | Ignored:
    """The job event of one OpenAI webhook, or :class:`Ignored` for a type that is no job's end
    (``realtime.call.incoming``, or one OpenAI adds later).

    Raises:
        msgspec.DecodeError: the body is not JSON.
        msgspec.ValidationError: no ``type``; or, for a job's event, no ``created_at`` or ``data.id``.
    """
    kind_of_event = _decode_type(body).type
    prefix, _, last = kind_of_event.rpartition(".")
    status = OUTCOMES.get(last) if prefix in OBJECTS else None
    if status is None or (last == "incomplete" and kind_of_event != _INCOMPLETE):
        return Ignored(provider="openai", what=kind_of_event)
    openai_event = _decode(body)
    error_message = None
    if kind_of_event == _INCOMPLETE:
        error_message = "the response ended incomplete (OpenAI: see the response's incomplete_details)"
    elif status is Status.FAILED:
        error_message = f"OpenAI reported {kind_of_event} (the event carries ids only: see the {prefix})"
    return event(
        kind=kind,
        job_id=openai_event.data.id,
        status=status,
        timestamp=_moment(openai_event.created_at, timestamp),
        received_at=received_at,
        delivery_id=delivery_id,
        error_message=error_message,
    )


def _moment(seconds: int, fallback: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return fallback
