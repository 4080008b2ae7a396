"""The alphabets of the identifiers the gateway accepts, defined once for every place that takes one.

Webhook payloads, registrations, the read API's path and query parameters and the ``webhook-id`` header
all validate against these, so an id that one edge refuses can never reach a store through another.

msgspec (and Litestar, which hands its parameter constraints to msgspec) *searches* a pattern with Python's
``re``, where ``$`` also matches just before a final newline: ``"job-1\\n"`` would pass ``^[a-z0-9-]+$``.
Every pattern here ends with ``$(?!\\n)`` instead, which means the same in Python and in the JSON Schema
(ECMA-262) dialect the OpenAPI document is read with: the end of the text, nothing after it.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec

__all__ = (
    "CONTROL_FREE_PATTERN",
    "JOB_ID_PATTERN",
    "MAX_ID_LENGTH",
    "Identifier",
    "JobId",
    "Label",
    "has_control_character",
    "is_job_id",
)

_END = r"$(?!\n)"

MAX_ID_LENGTH: Final = 128

JOB_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}" + _END
"""A job id: 1-128 characters of ASCII letters, digits and ``. _ : -``, starting with a letter or digit."""

CONTROL_FREE_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]*" + _END
"""Any text without a control character (Unicode category Cc: C0, DEL and C1)."""

_JOB_ID = re.compile(JOB_ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

JobId = Annotated[
    str,
    msgspec.Meta(
        pattern=JOB_ID_PATTERN,
        description="The backend's job id: 1-128 characters of letters, digits and . _ : -",
    ),
]
Identifier = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=CONTROL_FREE_PATTERN,
        description="An id of the app's (a user, an organisation): 1-128 characters, no control characters",
    ),
]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=CONTROL_FREE_PATTERN)]
"""Text that becomes a metric label value (a model name): 1-200 characters, no control characters."""


def is_job_id(text: str) -> bool:
    """Whether ``text`` is a job id, exactly (no trailing newline, no other character)."""
    return _JOB_ID.match(text) is not None


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a control character (a NUL, a newline, DEL, C1 ...)."""
    return _CONTROL.search(text) is not None
