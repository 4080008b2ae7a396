"""Stages 3 and 4: trust only authenticated senders, from the headers, then from the signature over the body.

A request is authentic when it carries either a sender's secret in ``X-Webhook-Secret`` (as the seed's
backend sends it) or a valid Standard Webhooks signature made with any of a sender's keys (``v1`` HMAC under
its ``whsec_`` keys, ``v1a`` ed25519 under its ``whpk_`` keys or its JWK Set's): that sender sent it. fal
signs in its own headers (:class:`FalAuthenticator`). Every comparison with a secret is constant-time, and
compares SHA-256 digests of equal length, so its running time says nothing about the secret's length either.
What the headers alone decide (a secret, or signature headers that are missing, malformed or out of
tolerance) is decided before the body is read (:meth:`Authenticator.verify_headers`). The sender only ever
learns "401"; the precise reason is kept for the gateway's own telemetry.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from gateway import signatures
from gateway.answers import AuthFailure
from gateway.jwks import JwksState, KeySet
from gateway.senders import DEFAULT_SENDER
from gateway.signatures import Ed25519PublicKey

__all__ = ("AuthFailure", "Authenticator", "Credentials", "FalAuthenticator", "Verdict")


class Verdict(NamedTuple):
    """The outcome of authentication."""

    failure: AuthFailure | None
    """``None`` when the request is authentic."""
    clock_skew: float | None = None
    """For a genuinely signed request (even an expired one): its timestamp minus our clock, in seconds."""
    sender: str | None = None
    """The sender whose credential verified (for an expired signature too); ``None`` when none did."""
    unavailable: KeySet | None = None
    """No key verified, and this sender's JWK Set has never been fetched: answer 503, not 401."""


class Credentials(NamedTuple):
    """One sender's credentials: its secret (``None``: none), its signing keys, its ed25519 keys and the
    JWK Set it publishes more of them in."""

    sender: str
    secret: str | None
    signing_keys: tuple[bytes, ...]
    public_keys: tuple[Ed25519PublicKey, ...] = ()
    key_set: KeySet | None = None

    @property
    def signs(self) -> bool:
        return bool(self.signing_keys) or bool(self.public_keys) or self.key_set is not None

    def ed25519_keys(self) -> tuple[Ed25519PublicKey, ...]:
        return self.public_keys + self.key_set.keys if self.key_set is not None else self.public_keys


_MISSING = AuthFailure.MISSING  # read once: an Enum class attribute goes through EnumType.__getattr__'s hook
_MAX_TIMESTAMP_DIGITS = 12  # seconds since the epoch: 12 digits last until the year 33658


class Authenticator:
    """Checks a request's credentials against every sender's secret and signing keys; the credential that
    verifies names the sender (no two senders share one: the settings refuse it).

    A sender without any credential (development only) is *open*: a request no credential verifies is
    taken as the first open sender's, as a gateway without credentials accepts every webhook.
    """

    __slots__ = ("_key_sets", "_open", "_secrets", "_signers", "_tolerance")

    def __init__(
        self,
        secret: str | None,
        signing_keys: tuple[bytes, ...],
        tolerance_seconds: int,
        *,
        sender: str = DEFAULT_SENDER,
    ) -> None:
        self._init((Credentials(sender, secret, signing_keys),), tolerance_seconds)

    @classmethod
    def of_senders(cls, senders: Iterable[Credentials], tolerance_seconds: int) -> Authenticator:
        """An authenticator telling ``senders`` apart by their credentials."""
        authenticator = cls.__new__(cls)
        authenticator._init(tuple(senders), tolerance_seconds)
        return authenticator

    def _init(self, senders: tuple[Credentials, ...], tolerance_seconds: int) -> None:
        self._secrets = tuple(
            (sender.sender, _digest(sender.secret.encode())) for sender in senders if sender.secret is not None
        )
        self._signers = tuple(sender for sender in senders if sender.signs)
        self._key_sets = tuple(sender.key_set for sender in senders if sender.key_set is not None)
        self._open = next(
            (Verdict(None, sender=sender.sender) for sender in senders if sender.secret is None and not sender.signs),
            None,
        )
        self._tolerance = tolerance_seconds

    @property
    def enabled(self) -> bool:
        """False when nothing is configured: development mode accepts every webhook."""
        return bool(self._secrets) or bool(self._signers)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
        """Whether the request is authentic, whose it is, and if not, why."""
        verdict = self._verify(headers, body, now)
        if verdict.failure is not None and self._open is not None:
            return self._open
        return verdict

    def _verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
        failure = _MISSING
        provided = headers.get("x-webhook-secret")
        if provided is not None and self._secrets:
            # Header values arrive decoded as Latin-1: re-encoding so recovers the bytes the sender sent
            # (a UTF-8 secret with accents then matches).
            owner = self._secret_owner(provided.encode("latin-1", "replace"))
            if owner is not None:
                return Verdict(None, sender=owner)
            failure = AuthFailure.BAD_SECRET
        if "webhook-signature" in headers and self._signers:
            # A presented signature decides (and says more about a failure than a bad secret does).
            return self._verify_signature(headers, body, now)
        return Verdict(failure)

    def verify_headers(self, headers: Mapping[str, str], now: float) -> Verdict | None:
        """What the headers alone decide, before the body is read: a :class:`Verdict`, or ``None`` when
        the decision needs the body (well-formed signature headers within the tolerance: call :meth:`verify`).

        A request refused here would be refused by :meth:`verify` too, for the same reason, except that a
        signature with a timestamp out of tolerance is ``EXPIRED`` without its HMAC being checked.
        """
        if not self._signers or "webhook-signature" not in headers:
            return self.verify(headers, b"", now)  # no signature to check: the body plays no part
        failure = _signature_headers_failure(headers, now, self._tolerance)
        if failure is None:
            return None
        # The secret, when right, wins over a signature (as in verify): asked only on this failing path.
        unsigned = {name: value for name, value in headers.items() if name != "webhook-signature"}
        verdict = self.verify(unsigned, b"", now)
        return verdict if verdict.failure is None else Verdict(failure)

    async def refresh_unknown(self) -> bool:
        """A signature verified with no key: refresh the JWK Sets that may have rotated (each at most once
        a minute); whether any changed, so that verifying again may succeed."""
        changed = False
        for key_set in self._key_sets:
            changed |= await key_set.refresh_unknown()
        return changed

    def _secret_owner(self, provided: bytes) -> str | None:
        """The sender whose secret ``provided`` is: every secret is compared, in constant time, so timing
        says neither whether nor whose it matched."""
        digest = _digest(provided)
        owner = None
        for sender, expected in self._secrets:
            if hmac.compare_digest(digest, expected):
                owner = sender
        return owner

    def _verify_signature(self, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
        if _malformed(headers):
            return Verdict(AuthFailure.MALFORMED)
        timestamp = headers["webhook-timestamp"]
        message_id, header = headers["webhook-id"], headers["webhook-signature"]
        owner = None
        for signer in self._signers:  # every sender's keys, whoever matches: timing names nobody
            ed25519 = signer.ed25519_keys()
            if signatures.verify(signer.signing_keys, message_id, timestamp, body, header) or (
                ed25519 and signatures.verify_v1a(ed25519, message_id, timestamp, body, header)
            ):
                owner = signer.sender
        if owner is None:
            return Verdict(AuthFailure.BAD_SIGNATURE, unavailable=self._unavailable(header))
        skew = int(timestamp) - now
        if abs(skew) > self._tolerance:
            return Verdict(AuthFailure.EXPIRED, skew, owner)
        return Verdict(None, skew, owner)

    def _unavailable(self, header: str) -> KeySet | None:
        """The first JWK Set never fetched, when the header holds an ed25519 signature it might verify."""
        if not signatures.parse_header(header, "v1a"):
            return None
        return next((key_set for key_set in self._key_sets if key_set.state is JwksState.UNAVAILABLE), None)


class FalAuthenticator:
    """One fal sender's signatures: ed25519 over fal's own message, in ``X-Fal-Webhook-*`` headers
    (https://docs.fal.ai/model-apis/model-endpoints/webhooks), under its ``whpk_`` keys and its JWK Set's.

    Its ``verify_headers`` and ``verify`` answer as :class:`Authenticator`'s do.
    """

    __slots__ = ("_credentials", "_tolerance")

    def __init__(self, credentials: Credentials, tolerance_seconds: int) -> None:
        self._credentials = credentials
        self._tolerance = tolerance_seconds

    @property
    def enabled(self) -> bool:
        return self._credentials.signs

    def verify_headers(self, headers: Mapping[str, str], now: float) -> Verdict | None:
        if not self.enabled:
            return Verdict(None, sender=self._credentials.sender)
        if _fal_malformed(headers):
            return Verdict(AuthFailure.MISSING if _FAL_SIGNATURE not in headers else AuthFailure.MALFORMED)
        if abs(int(headers[_FAL_TIMESTAMP]) - now) > self._tolerance:
            return Verdict(AuthFailure.EXPIRED)
        return None

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
        early = self.verify_headers(headers, now)
        if early is not None:
            return early
        timestamp = headers[_FAL_TIMESTAMP]
        credentials = self._credentials
        if not signatures.verify_fal(
            credentials.ed25519_keys(),
            headers[_FAL_REQUEST_ID],
            headers[_FAL_USER_ID],
            timestamp,
            body,
            headers[_FAL_SIGNATURE],
        ):
            key_set = credentials.key_set
            unavailable = key_set if key_set is not None and key_set.state is JwksState.UNAVAILABLE else None
            return Verdict(AuthFailure.BAD_SIGNATURE, unavailable=unavailable)
        return Verdict(None, int(timestamp) - now, credentials.sender)

    async def refresh_unknown(self) -> bool:
        key_set = self._credentials.key_set
        return key_set is not None and await key_set.refresh_unknown()


_FAL_REQUEST_ID = "x-fal-webhook-request-id"
_FAL_USER_ID = "x-fal-webhook-user-id"
_FAL_TIMESTAMP = "x-fal-webhook-timestamp"
_FAL_SIGNATURE = "x-fal-webhook-signature"


def _fal_malformed(headers: Mapping[str, str]) -> bool:
    timestamp = headers.get(_FAL_TIMESTAMP, "")
    return (
        not headers.get(_FAL_REQUEST_ID)
        or _FAL_USER_ID not in headers
        or not headers.get(_FAL_SIGNATURE)
        or len(timestamp) > _MAX_TIMESTAMP_DIGITS
        or not (timestamp.isascii() and timestamp.isdigit())
    )


def _signature_headers_failure(headers: Mapping[str, str], now: float, tolerance: int) -> AuthFailure | None:
    """Why signature headers fail before the body is seen (``MALFORMED``, ``EXPIRED``), or ``None``."""
    if _malformed(headers):
        return AuthFailure.MALFORMED
    return AuthFailure.EXPIRED if abs(int(headers["webhook-timestamp"]) - now) > tolerance else None


def _malformed(headers: Mapping[str, str]) -> bool:
    """Whether the signature headers are incomplete or unparseable (no ``v1`` or ``v1a`` signature counts
    as such)."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    return (
        not msg_id
        or not timestamp
        or len(timestamp) > _MAX_TIMESTAMP_DIGITS
        or not (timestamp.isascii() and timestamp.isdigit())
        or not (
            signatures.parse_header(headers.get("webhook-signature", ""))
            or signatures.parse_header(headers.get("webhook-signature", ""), "v1a")
        )
    )


def _digest(secret: bytes) -> bytes:
    """What is compared in place of a shared secret: 32 bytes whatever its length."""
    return hashlib.sha256(secret).digest()
