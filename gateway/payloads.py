"""The webhook payloads the generation backend posts, as msgspec Structs.

Each kind's payload is a union tagged on ``status``: one Struct per status, so a ``completed`` event
without its ``data`` or a ``failed`` one without ``error_message`` is rejected by the decoder itself,
with the JSON path of the problem. Unknown fields are ignored on purpose: the backend may add fields
before the gateway knows them, and that must not turn its webhooks into 400s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

__all__ = (
    "Article",
    "BlogCompleted",
    "BlogData",
    "BlogPayload",
    "Completed",
    "Details",
    "Failed",
    "Generating",
    "Image",
    "ImageCompleted",
    "ImageData",
    "ImagePayload",
    "Initializing",
    "Metadata",
    "Payload",
    "Pending",
    "Saving",
)


JobId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="The backend's job id: 1-128 characters of letters, digits and . _ : -",
    ),
]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
Dimensions = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,5}x[1-9][0-9]{0,5}$", examples=["1024x1024"])]
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

    model_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    generation_time_seconds: NonNegativeFloat | None = None


class Details(_Shape, frozen=True):
    """``data`` of an event without a result (progress, failure): metadata only."""

    metadata: Metadata | None = None


class Image(_Shape, frozen=True):
    url: NonEmptyText
    format: str | None = None
    dimensions: Dimensions | None = None
    size_bytes: NonNegativeInt | None = None


class ImageData(_Shape, frozen=True):
    images: Annotated[list[Image], msgspec.Meta(min_length=1)]
    metadata: Metadata | None = None


class Article(_Shape, frozen=True):
    title: NonEmptyText
    url: str | None = None
    word_count: NonNegativeInt | None = None


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


class Failed(Payload, frozen=True, tag="failed"):
    error_message: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
    data: Details | None = None


class ImageCompleted(Payload, frozen=True, tag="completed"):
    data: ImageData


class BlogCompleted(Payload, frozen=True, tag="completed"):
    data: BlogData


Completed = ImageCompleted | BlogCompleted
ImagePayload = Pending | Initializing | Generating | Saving | ImageCompleted | Failed
BlogPayload = Pending | Initializing | Generating | Saving | BlogCompleted | Failed
