"""The webhook payloads the generation backend posts, as msgspec Structs.

Each kind's payload is a union tagged on ``status``: one Struct per status, so a ``completed`` event
without its ``data`` or a ``failed`` one without ``error_message`` is rejected by the decoder itself,
with the JSON path of the problem; a ``canceled`` one may carry ``error_message`` as its reason. Unknown
fields are ignored on purpose: the backend may add fields before the gateway knows them, and that must not
turn its webhooks into 400s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from gateway.ids import JobId, Label

__all__ = (
    "Article",
    "BlogCompleted",
    "BlogData",
    "BlogPayload",
    "Canceled",
    "Completed",
    "Details",
    "Failed",
    "Generating",
    "Image",
    "ImageCompleted",
    "ImageData",
    "ImagePayload",
    "Initializing",
    "JobId",
    "Metadata",
    "Payload",
    "Pending",
    "Saving",
)


Dimensions = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,5}x[1-9][0-9]{0,5}$(?!\n)", examples=["1024x1024"])]
# Plausible maxima (docs/webhooks-validation.md): a value past one is a sender's bug, answered 400, never
# recorded, and never observed by a metric (one 1.7e308 would leave a histogram's sum at +Inf for good).
MAX_GENERATION_SECONDS = 7 * 86400
MAX_SIZE_BYTES = 2**40
MAX_WORD_COUNT = 10_000_000
MAX_IMAGES = 1000
GenerationSeconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_GENERATION_SECONDS)]
SizeBytes = Annotated[int, msgspec.Meta(ge=0, le=MAX_SIZE_BYTES)]
WordCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_WORD_COUNT)]
NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]
Timestamp = Annotated[
    datetime,
    msgspec.Meta(
        description="RFC 3339 date-time; without a zone it is read as UTC",
        extra_json_schema={"format": "date-time"},
    ),
]


class _Shape(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Policy shared by every nested object: immutable, keyword-only, absent optionals left out on output."""


class Metadata(_Shape, frozen=True):
    """How the result was produced; every field optional so progress events may carry part of it."""

    model_name: Label | None = None
    """A metric label value: no control characters."""
    generation_time_seconds: GenerationSeconds | None = None


class Details(_Shape, frozen=True):
    """``data`` of an event without a result (progress, failure): metadata only."""

    metadata: Metadata | None = None


class Image(_Shape, frozen=True):
    url: NonEmptyText
    format: str | None = None
    dimensions: Dimensions | None = None
    size_bytes: SizeBytes | None = None


class ImageData(_Shape, frozen=True):
    images: Annotated[list[Image], msgspec.Meta(min_length=1, max_length=MAX_IMAGES)]
    metadata: Metadata | None = None


class Article(_Shape, frozen=True):
    title: NonEmptyText
    url: str | None = None
    word_count: WordCount | None = None


class BlogData(_Shape, frozen=True):
    article: Article
    metadata: Metadata | None = None


class Payload(msgspec.Struct, frozen=True, kw_only=True, tag_field="status"):
    """The envelope every webhook shares. ``timestamp`` without a zone is read as UTC."""

    job_id: JobId
    timestamp: Timestamp


class Pending(Payload, frozen=True, tag="pending"):
    data: Details | None = None


class Initializing(Payload, frozen=True, tag="initializing"):
    data: Details | None = None


class Generating(Payload, frozen=True, tag="generating"):
    data: Details | None = None


class Saving(Payload, frozen=True, tag="saving"):
    data: Details | None = None


ErrorMessage = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]


class Failed(Payload, frozen=True, tag="failed"):
    error_message: ErrorMessage
    data: Details | None = None


class Canceled(Payload, frozen=True, tag="canceled"):
    """A user's or a provider's cancellation: terminal, and not a failed generation. ``error_message``,
    optional, says why."""

    error_message: ErrorMessage | None = None
    data: Details | None = None


class ImageCompleted(Payload, frozen=True, tag="completed"):
    data: ImageData


class BlogCompleted(Payload, frozen=True, tag="completed"):
    data: BlogData


Completed = ImageCompleted | BlogCompleted
ImagePayload = Pending | Initializing | Generating | Saving | ImageCompleted | Failed | Canceled
BlogPayload = Pending | Initializing | Generating | Saving | BlogCompleted | Failed | Canceled
