"""Stage 4: trust only authenticated senders.

A request is authentic when it carries either the shared secret in ``X-Webhook-Secret`` (as the seed's
backend sends it) or a valid Standard Webhooks signature made with any configured key. Every comparison
with a secret is constant-time. The sender only ever learns "401"; the precise reason is kept for the
gateway's own telemetry.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from collections.abc import Mapping

__all__ = ("AuthFailure", "Authenticator")


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


class Authenticator:
    """Checks a request's credentials against the configured secret and signing keys."""

    __slots__ = ("_keys", "_secret", "_tolerance")

    def __init__(self, secret: str | None, signing_keys: tuple[bytes, ...], tolerance_seconds: int) -> None:
        self._secret = secret.encode() if secret is not None else None
        self._keys = signing_keys
        self._tolerance = tolerance_seconds

    @property
    def enabled(self) -> bool:
        """False when nothing is configured: development mode accepts every webhook."""
        return self._secret is not None or bool(self._keys)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> AuthFailure | None:
        """Return ``None`` for an authentic request, else the reason it is not."""
        if not self.enabled:
            return None
        failure = AuthFailure.MISSING
        provided = headers.get("x-webhook-secret")
        if provided is not None and self._secret is not None:
            if hmac.compare_digest(provided.encode(), self._secret):
                return None
            failure = AuthFailure.BAD_SECRET
        if "webhook-signature" in headers and self._keys:
            signature_failure = self._verify_signature(headers, body, now)
            if signature_failure is None:
                return None
            failure = signature_failure
        return failure

    def _verify_signature(self, headers: Mapping[str, str], body: bytes, now: float) -> AuthFailure | None:
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        if not msg_id or not timestamp or not timestamp.isdigit():
            return AuthFailure.MALFORMED
        signatures = _parse_signatures(headers["webhook-signature"])
        if not signatures:
            return AuthFailure.MALFORMED
        signed = b"".join((msg_id.encode(), b".", timestamp.encode(), b".", body))
        expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in self._keys]
        # Compare every pair, without stopping early, so timing does not reveal which key matched.
        matched = False
        for signature in signatures:
            for digest in expected:
                matched |= hmac.compare_digest(signature, digest)
        if not matched:
            return AuthFailure.BAD_SIGNATURE
        if abs(now - int(timestamp)) > self._tolerance:
            return AuthFailure.EXPIRED
        return None


def _parse_signatures(header: str) -> list[bytes]:
    """The ``v1`` signatures of a ``webhook-signature`` header, decoded; others are skipped."""
    signatures = []
    for token in header.split():
        version, comma, encoded = token.partition(",")
        if not comma or version != "v1":
            continue
        try:
            signatures.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return signatures
