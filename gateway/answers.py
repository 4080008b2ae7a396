"""What the gateway answers a webhook: Accepted, or a WebhookRefused the transport turns into a 4xx/5xx."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec

from gateway.model import Outcome, Status

__all__ = (
    "STORE_RETRY_AFTER_SECONDS",
    "Accepted",
    "Acknowledged",
    "AuthFailure",
    "RefusalReason",
    "WebhookRefused",
    "shutting_down",
    "unavailable",
)

STORE_RETRY_AFTER_SECONDS = 5
"""What a 503 for a failing store asks the sender to wait before retrying."""


class RefusalReason(enum.StrEnum):
    """Closed set of reasons a webhook is refused (the ``outcome`` label of the request metrics)."""

    INVALID = "invalid"
    UNAUTHORIZED = "unauthorized"
    CONFLICT = "conflict"
    UNREGISTERED = "unregistered"
    """``GATEWAY_REQUIRE_REGISTERED_JOBS`` is on and the job was never registered (404)."""
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class WebhookRefused(Exception):
    """A webhook the gateway refuses; nothing about the job changed.

    ``detail`` is shown to the sender, so it names what is wrong with the request and never echoes
    a secret or a signature.
    """

    def __init__(
        self,
        status_code: int,
        refusal: RefusalReason,
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


def unavailable(store: str) -> WebhookRefused:
    """The 503 for a store that could not answer: nothing was changed, so the sender's retry is safe."""
    return WebhookRefused(
        503,
        RefusalReason.UNAVAILABLE,
        f"The {store} store is unavailable; nothing was changed. Retry after Retry-After seconds, same request.",
        headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
    )


def shutting_down() -> WebhookRefused:
    """The 503 for a webhook cut off by the shutdown deadline before its write began: nothing was changed."""
    return WebhookRefused(
        503,
        RefusalReason.UNAVAILABLE,
        "The gateway is shutting down; nothing was changed. Retry after Retry-After seconds, same request.",
        headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS), "Connection": "close"},
    )


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The 200 answer: the webhook is durably recorded (or was already)."""

    received: bool = True
    job_id: str
    status: Status
    """The job's status after this webhook."""
    outcome: Outcome


class Acknowledged(msgspec.Struct, frozen=True, kw_only=True):
    """The 200 answer to a provider's callback the gateway does not map: acknowledged, so the provider
    does not retry it, and recorded nowhere."""

    received: bool = True
    outcome: Outcome
    """Always ``ignored``."""
    detail: str


class AuthFailure(enum.StrEnum):
    """Why authentication failed (the ``reason`` label of the auth-failure metric)."""

    MISSING = "missing"
    """No credential at all."""
    BAD_SECRET = "bad_secret"  # noqa: S105 (a label, not a secret)
    """``X-Webhook-Secret`` does not match."""
    BAD_SIGNATURE = "bad_signature"
    """Well-formed signatures, none made with a configured key over this body."""
    EXPIRED = "expired"
    """A valid signature whose ``webhook-timestamp`` is outside the tolerance (a replay or a skewed clock)."""
    MALFORMED = "malformed"
    """Signature headers incomplete or unparseable."""
