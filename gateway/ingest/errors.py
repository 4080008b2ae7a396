"""Why a webhook was refused: one exception the transport turns into a 4xx/5xx answer."""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ("Refusal", "Rejection")


class Refusal(enum.StrEnum):
    """Closed set of reasons a webhook is refused (the ``outcome`` label of the request metrics)."""

    INVALID = "invalid"
    UNAUTHORIZED = "unauthorized"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class Rejection(Exception):
    """A webhook the gateway refuses; nothing about the job changed.

    ``detail`` is shown to the sender, so it names what is wrong with the request and never echoes
    a secret or a signature.
    """

    def __init__(
        self,
        status_code: int,
        refusal: Refusal,
        detail: str,
        headers: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.refusal = refusal
        self.detail = detail
        self.headers = headers or {}
        self.job_id = job_id
