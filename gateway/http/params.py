"""The read API's path and query parameters, validated here once for every route that takes them.

A value a store cannot hold or compare (a NUL byte in an id, an event id past 64 bits, a time whose
UTC reading falls outside years 1-9999) is a client's mistake: it is answered 400 naming the parameter,
never clamped and never sent to a store, where it would come back as a store failure (a 503 that tells
the client to retry forever, counted in ``gateway_store_errors_total``). Litestar hands each constraint to
msgspec, so a refusal is its usual 400 with ``extra`` naming the parameter and where it was sent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

import msgspec
from litestar.exceptions import ValidationException
from litestar.params import PathParameter, QueryParameter

from gateway.ids import CONTROL_FREE_PATTERN, JOB_ID_PATTERN, MAX_ID_LENGTH

__all__ = (
    "MAX_EVENT_ID",
    "AfterEvent",
    "IdFilter",
    "JobIdFilter",
    "JobIdPath",
    "moment",
)

MAX_EVENT_ID: Final = 2**63 - 1
"""The largest id a store holds (a signed 64-bit integer)."""

_JOB_ID_TEXT = "A job id: 1-128 characters of letters, digits and . _ : -"

JobIdPath = Annotated[str, PathParameter(pattern=JOB_ID_PATTERN, max_length=MAX_ID_LENGTH, description=_JOB_ID_TEXT)]
JobIdFilter = Annotated[
    str | None, QueryParameter(pattern=JOB_ID_PATTERN, max_length=MAX_ID_LENGTH, description=_JOB_ID_TEXT)
]
IdFilter = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=CONTROL_FREE_PATTERN,
        description="An id as registered: 1-128 characters, no control characters",
    ),
]
AfterEvent = Annotated[
    int | None,
    QueryParameter(ge=0, le=MAX_EVENT_ID, description="Resume after this event id (as `Last-Event-ID` does)"),
]


def moment(name: str, text: str | None) -> datetime | None:
    """An RFC 3339 time as an aware UTC datetime; one without a zone is read as UTC, as webhook timestamps
    are. Parsed here rather than by Litestar, whose lenient parsing would read a number (``0.5``) as a Unix
    time. Raise a 400 naming ``name`` for anything else, a time out of range in UTC included
    (``0001-01-01T00:00:00+01:00``)."""
    if text is None:
        return None
    try:
        parsed = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        raise ValidationException(f"Invalid {name}: an RFC 3339 time is needed, e.g. 2024-05-01T12:00:00Z") from None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise ValidationException(f"Invalid {name}: out of range (years 1 to 9999 in UTC)") from None
