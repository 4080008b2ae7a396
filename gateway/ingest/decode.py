"""Stage 5: decode and validate the body into a normalised :class:`~gateway.model.JobEvent`.

msgspec does the validation in one pass; its messages name the JSON path of the problem
(``Expected `int` >= 0 - at `$.data.images[0].size_bytes```) and are passed to the sender, less
any echoed value, plus a hint where one helps (the allowed statuses, another kind's route).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.answers import RefusalReason, WebhookRefused
from gateway.kinds import KINDS, JobKind, a_job_of_kind
from gateway.model import JobEvent, Status
from gateway.payloads import Canceled, Failed, ImageData, Payload

__all__ = ("decode_event", "without_value")

_encode = msgspec.json.Encoder().encode
_STATUS_OF: dict[type[Payload], Status] = {}


def decode_event(kind: JobKind, body: bytes, delivery_id: str | None, received_at: datetime) -> JobEvent:
    """Validate ``body`` as a webhook of ``kind``; refuse it with 400 naming the field otherwise."""
    try:
        payload = kind.decoder.decode(body)
    except msgspec.ValidationError as error:
        raise WebhookRefused(400, RefusalReason.INVALID, _invalid(kind, body, str(error))) from None
    except msgspec.DecodeError as error:
        detail = "the body is empty (expected a JSON object)" if not body.strip() else str(error)
        raise WebhookRefused(400, RefusalReason.INVALID, f"Malformed JSON: {detail}") from None
    except UnicodeDecodeError:
        raise WebhookRefused(400, RefusalReason.INVALID, "Malformed JSON: the body is not valid UTF-8") from None
    except RecursionError:
        # Unknown fields are skipped, but msgspec still walks them: absurd nesting ends up here.
        raise WebhookRefused(400, RefusalReason.INVALID, "Malformed JSON: nested too deeply") from None

    timestamp = payload.timestamp
    try:
        timestamp = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp.astimezone(UTC)
    except OverflowError:
        raise WebhookRefused(
            400, RefusalReason.INVALID, "Invalid payload: timestamp is out of range - at `$.timestamp`"
        ) from None
    result = None
    error_message = None
    images = 0
    data: Any = getattr(payload, "data", None)  # every kind's `data` Struct has `metadata`
    if type(payload) is kind.completed:
        # The result is stored and served as sent (less unknown fields); metadata is kept apart.
        result = msgspec.Raw(_encode(msgspec.structs.replace(data, metadata=None)))
        if isinstance(data, ImageData):
            images = len(data.images)
    elif isinstance(payload, Failed | Canceled):
        error_message = payload.error_message
        # Stored as text, which PostgreSQL refuses to hold a NUL in.
        if error_message is not None and "\x00" in error_message:
            raise WebhookRefused(
                400, RefusalReason.INVALID, "Invalid payload: NUL character (\\u0000) - at `$.error_message`"
            )
    return JobEvent(
        kind=kind.name,
        job_id=payload.job_id,
        status=_status_of(type(payload)),
        timestamp=timestamp,
        received_at=received_at,
        delivery_id=delivery_id,
        metadata=data.metadata if data is not None else None,
        result=result,
        error_message=error_message,
        images=images,
    )


def _invalid(kind: JobKind, body: bytes, message: str) -> str:
    """The 400 detail for a payload that is valid JSON but not a webhook of ``kind`` (built on the error
    path only): msgspec's message without the offending value, the allowed statuses when ``status`` is
    unknown, and the right route when the payload is another kind's."""
    detail = f"Invalid payload: {without_value(message)}"
    if message.startswith("Invalid value '") and message.endswith(" - at `$.status`"):
        return f"{detail}: expected one of {', '.join(kind.statuses)}"
    for other in KINDS:
        if other is not kind:
            try:
                other.decoder.decode(body)
            except (msgspec.DecodeError, RecursionError):
                continue
            return f"{detail}; this looks like {a_job_of_kind(other.name)}: post it to {other.route}"
    return detail


def without_value(message: str) -> str:
    """msgspec quotes the offending value of a tag or enum (``Invalid value 'x' - at `$.status```): any
    length of the sender's payload echoed into the answer (and the span's status). Named by its path only."""
    head, separator, path = message.rpartition(" - at ")
    if separator and head.startswith(("Invalid value '", "Invalid enum value '")):
        return f"Invalid value - at {path}"
    return message


def _status_of(payload_type: type[Payload]) -> Status:
    """The status a payload Struct is tagged with (looked up once per Struct type)."""
    status = _STATUS_OF.get(payload_type)
    if status is None:
        status = _STATUS_OF[payload_type] = Status(str(payload_type.__struct_config__.tag))
    return status
