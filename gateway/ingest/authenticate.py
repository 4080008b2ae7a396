"""Stage 4: trust only authenticated senders.

A request is authentic when it carries either the shared secret in ``X-Webhook-Secret`` (as the seed's
backend sends it) or a valid Standard Webhooks signature made with any configured key. Every comparison
with a secret is constant-time, and compares SHA-256 digests of equal length, so its running time says
nothing about the secret's length either. What the headers alone decide (a secret, or signature headers that
are missing, malformed or out of tolerance) is decided before the body is read
(:meth:`Authenticator.verify_headers`). The sender only ever learns "401"; the precise reason is kept for the
gateway's own telemetry.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import NamedTuple

from gateway import signatures
from gateway.answers import AuthFailure

__all__ = ("AuthFailure", "Authenticator", "Verdict")


class Verdict(NamedTuple):
    """The outcome of authentication."""

    failure: AuthFailure | None
    """``None`` when the request is authentic."""
    clock_skew: float | None = None
    """For a genuinely signed request (even an expired one): its timestamp minus our clock, in seconds."""


_ACCEPTED = Verdict(None)
_MAX_TIMESTAMP_DIGITS = 12  # seconds since the epoch: 12 digits last until the year 33658


class Authenticator:
    """Checks a request's credentials against the configured secret and signing keys."""

    __slots__ = ("_keys", "_secret", "_tolerance")

    def __init__(self, secret: str | None, signing_keys: tuple[bytes, ...], tolerance_seconds: int) -> None:
        self._secret = _digest(secret.encode()) if secret is not None else None
        self._keys = signing_keys
        self._tolerance = tolerance_seconds

    @property
    def enabled(self) -> bool:
        """False when nothing is configured: development mode accepts every webhook."""
        return self._secret is not None or bool(self._keys)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
        """Whether the request is authentic, and if not, why."""
        if not self.enabled:
            return _ACCEPTED
        failure = AuthFailure.MISSING
        provided = headers.get("x-webhook-secret")
        if provided is not None and self._secret is not None:
            # Header values arrive decoded as Latin-1: re-encoding so recovers the bytes the sender sent
            # (a UTF-8 secret with accents then matches).
            if hmac.compare_digest(_digest(provided.encode("latin-1", "replace")), self._secret):
                return _ACCEPTED
            failure = AuthFailure.BAD_SECRET
        if "webhook-signature" in headers and self._keys:
            # A presented signature decides (and says more about a failure than a bad secret does).
            return self._verify_signature(headers, body, now)
        return Verdict(failure)

    def verify_headers(self, headers: Mapping[str, str], now: float) -> Verdict | None:
        """What the headers alone decide, before the body is read: a :class:`Verdict`, or ``None`` when
        the decision needs the body (well-formed signature headers within the tolerance: call :meth:`verify`).

        A request refused here would be refused by :meth:`verify` too, for the same reason, except that a
        signature with a timestamp out of tolerance is ``EXPIRED`` without its HMAC being checked.
        """
        if not self._keys or "webhook-signature" not in headers:
            return self.verify(headers, b"", now)  # no signature to check: the body plays no part
        failure = _signature_headers_failure(headers, now, self._tolerance)
        if failure is None:
            return None
        # The secret, when right, wins over a signature (as in verify): asked only on this failing path.
        unsigned = {name: value for name, value in headers.items() if name != "webhook-signature"}
        return _ACCEPTED if self.verify(unsigned, b"", now).failure is None else Verdict(failure)

    def _verify_signature(self, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
        if _malformed(headers):
            return Verdict(AuthFailure.MALFORMED)
        timestamp = headers["webhook-timestamp"]
        if not signatures.verify(self._keys, headers["webhook-id"], timestamp, body, headers["webhook-signature"]):
            return Verdict(AuthFailure.BAD_SIGNATURE)
        skew = int(timestamp) - now
        if abs(skew) > self._tolerance:
            return Verdict(AuthFailure.EXPIRED, skew)
        return Verdict(None, skew)


def _signature_headers_failure(headers: Mapping[str, str], now: float, tolerance: int) -> AuthFailure | None:
    """Why signature headers fail before the body is seen (``MALFORMED``, ``EXPIRED``), or ``None``."""
    if _malformed(headers):
        return AuthFailure.MALFORMED
    return AuthFailure.EXPIRED if abs(int(headers["webhook-timestamp"]) - now) > tolerance else None


def _malformed(headers: Mapping[str, str]) -> bool:
    """Whether the signature headers are incomplete or unparseable (no ``v1`` signature counts as such)."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    return (
        not msg_id
        or not timestamp
        or len(timestamp) > _MAX_TIMESTAMP_DIGITS
        or not (timestamp.isascii() and timestamp.isdigit())
        or not signatures.parse_header(headers.get("webhook-signature", ""))
    )


def _digest(secret: bytes) -> bytes:
    """What is compared in place of a shared secret: 32 bytes whatever its length."""
    return hashlib.sha256(secret).digest()
