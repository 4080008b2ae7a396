"""What every provider mapper shares: the ``ignored`` answer, and building a job event from a callback."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec

from gateway.ids import has_control_character
from gateway.model import JobEvent, Status
from gateway.payloads import MAX_GENERATION_SECONDS, MAX_IMAGES, Image, ImageData, Metadata

__all__ = ("MAX_ERROR_CHARACTERS", "Ignored", "event", "image_result", "metadata", "utc")

MAX_ERROR_CHARACTERS = 10_000
"""A provider's error text is cut to this length (a native ``error_message``'s limit)."""

_encode = msgspec.json.Encoder().encode


class Ignored(msgspec.Struct, frozen=True, kw_only=True):
    """A callback of an event type or status the gateway does not map (one a provider added later):
    acknowledged with 2xx, so the provider does not retry it for days, and recorded nowhere."""

    provider: str
    what: str
    """The unmapped value as the provider sent it, e.g. ``"realtime.call.incoming"``."""

    @property
    def detail(self) -> str:
        return f"{self.provider} {self.what!r} is not a job status the gateway maps: acknowledged, not recorded"


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (read as UTC when it has no zone).

    Raises:
        msgspec.ValidationError: ``moment`` falls outside years 1-9999 once in UTC (a 400, as for a
            native payload's timestamp).
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise msgspec.ValidationError("a timestamp falls outside years 1-9999 in UTC") from None


def metadata(model: str | None, generation_seconds: float | None) -> Metadata | None:
    """The job's metadata from what a provider reported; a value the gateway cannot use as a label or
    an observation (control characters, an implausible duration) is left out, never a refusal: the
    callback is the provider's, signed, and refusing it would only make the provider retry."""
    if model is not None and (not model or len(model) > 200 or has_control_character(model)):
        model = None
    if generation_seconds is not None and not 0 <= generation_seconds <= MAX_GENERATION_SECONDS:
        generation_seconds = None
    if model is None and generation_seconds is None:
        return None
    return Metadata(model_name=model, generation_time_seconds=generation_seconds)


def image_result(images: Iterable[Image]) -> tuple[msgspec.Raw | None, int]:
    """The ``{"images": [...]}`` result of a completed image job, and how many images it holds
    (no result when there is none: a provider job's ``completed`` needs none)."""
    found = [image for image, _ in zip(images, range(MAX_IMAGES), strict=False)]
    if not found:
        return None, 0
    return msgspec.Raw(_encode(ImageData(images=found))), len(found)


def _error_text(text: str) -> str:
    # Stored as text, which PostgreSQL refuses to hold a NUL in.
    return text.replace("\x00", "\ufffd")[:MAX_ERROR_CHARACTERS]


def event(
    *,
    kind: str,
    job_id: str,
    status: Status,
    timestamp: datetime,
    received_at: datetime,
    delivery_id: str | None,
    meta: Metadata | None = None,
    result: msgspec.Raw | None = None,
    images: int = 0,
    error_message: str | None = None,
) -> JobEvent:
    return JobEvent(
        kind=kind,
        job_id=job_id,
        status=status,
        timestamp=utc(timestamp),
        received_at=received_at,
        delivery_id=delivery_id,
        metadata=meta,
        result=result,
        images=images,
        error_message=_error_text(error_message) if error_message is not None else None,
    )
