"""Webhook signatures: Standard Webhooks ``v1`` (HMAC) and ``v1a`` (ed25519), and fal's ed25519 scheme.

A ``v1`` signature is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under a ``whsec_`` key; a ``v1a``
one is ``v1a,<base64 ed25519 signature of the same bytes>`` under a ``whpk_`` public key. A
``webhook-signature`` header holds one or more, separated by spaces. fal signs its own message (see
:func:`fal_message`) and sends the signature in hex. The ed25519 arithmetic is the ``cryptography``
library's. This module imports nothing else of the gateway.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from collections.abc import Sequence
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = (
    "KEY_PREFIX",
    "MIN_KEY_BYTES",
    "PUBLIC_KEY_PREFIX",
    "SECRET_KEY_PREFIX",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "InvalidKey",
    "fal_message",
    "parse_header",
    "parse_key",
    "parse_public_key",
    "parse_secret_key",
    "public_key_text",
    "sign",
    "sign_fal",
    "sign_v1a",
    "verify",
    "verify_fal",
    "verify_v1a",
)

KEY_PREFIX = "whsec_"
PUBLIC_KEY_PREFIX = "whpk_"
"""A Standard Webhooks ed25519 public key: ``whpk_<base64 of its 32 raw bytes>``."""
SECRET_KEY_PREFIX = "whsk_"  # noqa: S105 (a prefix, not a secret)
"""A Standard Webhooks ed25519 secret key (the sender's): ``whsk_<base64 of its 32-byte seed>``."""
_ED25519_BYTES = 32
MIN_KEY_BYTES = 16
"""The shortest key accepted, once decoded."""


class InvalidKey(ValueError):
    """A key that cannot be used. The message starts with a verb ("must ...", "is ..."), so a caller can
    put the key's name in front of it, and never contains the key."""


def parse_key(text: str, *, prefix_optional: bool = False) -> bytes:
    """The key of ``whsec_<base64>`` (with ``prefix_optional``, bare base64 too).

    Raises:
        InvalidKey: no prefix (where required, or when what follows is not base64 either), base64 that
            does not decode strictly, or fewer than :data:`MIN_KEY_BYTES` bytes once decoded.
    """
    encoded = text.removeprefix(KEY_PREFIX)
    prefixed = encoded is not text
    if not prefixed and not prefix_optional:
        raise InvalidKey(f"must start with '{KEY_PREFIX}' (a Standard Webhooks key)")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        if prefixed:
            raise InvalidKey(f"is not valid base64 after its '{KEY_PREFIX}' prefix") from None
        raise InvalidKey(
            f"must start with '{KEY_PREFIX}', followed by the key in base64 "
            f"(a Standard Webhooks key of at least {MIN_KEY_BYTES} random bytes)"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise InvalidKey(f"is shorter than {MIN_KEY_BYTES} bytes once decoded")
    return key


def _content(message_id: str, timestamp: str, body: bytes) -> bytes:
    """What Standard Webhooks signs, ``v1`` and ``v1a`` alike: ``{id}.{timestamp}.{body}``."""
    return b"%s.%s.%s" % (message_id.encode(), timestamp.encode(), body)


_BLOCK = 64
"""SHA-256's block size: HMAC's key is padded (or first hashed) to it."""
_INNER = bytes(x ^ 0x36 for x in range(256))
_OUTER = bytes(x ^ 0x5C for x in range(256))


class _Hash(Protocol):
    """What :func:`_keyed`'s hashes are used for (hashlib names no public type for them)."""

    def copy(self) -> _Hash: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


@functools.lru_cache(maxsize=32)
def _keyed(key: bytes) -> tuple[_Hash, _Hash]:
    """HMAC-SHA256's inner and outer hashes with ``key`` already absorbed (RFC 2104): each message then
    costs two copies and its own bytes, not the key's two blocks again."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_INNER)), hashlib.sha256(key.translate(_OUTER))


def _digest(key: bytes, message_id: str, timestamp: str, body: bytes) -> bytes:
    """HMAC-SHA256 of the message under ``key``, as ``hmac.new(key, message, sha256).digest()``."""
    inner, outer = _keyed(key)
    inner = inner.copy()
    inner.update(_content(message_id, timestamp, body))
    outer = outer.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``v1,<base64>``.

    ``timestamp`` is the ``webhook-timestamp`` header's text (seconds since the epoch).
    """
    return "v1," + base64.b64encode(_digest(key, message_id, timestamp, body)).decode()


def parse_header(header: str, version: str = "v1") -> list[bytes]:
    """The signatures of ``version`` (``v1`` or ``v1a``) of a ``webhook-signature`` header, decoded, in order.

    Tokens of another version, without a comma, or not strictly base64 are skipped: an empty list means
    the header holds nothing to check.
    """
    found = []
    for token in header.split():
        token_version, comma, encoded = token.partition(",")
        if not comma or token_version != version:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify(keys: Sequence[bytes], message_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """Whether any ``v1`` signature of ``header`` was made with any of ``keys`` (rotation) over this message.

    Every signature is compared with every key's digest, in constant time and without stopping at a
    match, so timing says neither which key matched nor where. The timestamp's age is not checked here.
    """
    expected = [_digest(key, message_id, timestamp, body) for key in keys]
    matched = False
    for signature in parse_header(header):
        for digest in expected:
            matched |= hmac.compare_digest(signature, digest)
    return matched


def _raw_ed25519(text: str, prefix: str, what: str) -> bytes:
    encoded = text.removeprefix(prefix)
    if encoded is text:
        raise InvalidKey(f"must start with '{prefix}' (a Standard Webhooks {what})")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"is not valid base64 after its '{prefix}' prefix") from None
    if len(raw) != _ED25519_BYTES:
        raise InvalidKey(f"must hold {_ED25519_BYTES} bytes once decoded (an ed25519 {what})")
    return raw


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The ed25519 public key of ``whpk_<base64>``.

    Raises:
        InvalidKey: no prefix, base64 that does not decode strictly, or not 32 bytes once decoded.
    """
    return Ed25519PublicKey.from_public_bytes(_raw_ed25519(text, PUBLIC_KEY_PREFIX, "public key"))


def parse_secret_key(text: str) -> Ed25519PrivateKey:
    """The ed25519 secret key of ``whsk_<base64>`` (a sender's, for ``gateway send`` and tests).

    Raises:
        InvalidKey: no prefix, base64 that does not decode strictly, or not 32 bytes once decoded.
    """
    return Ed25519PrivateKey.from_private_bytes(_raw_ed25519(text, SECRET_KEY_PREFIX, "secret key"))


def public_key_text(key: Ed25519PublicKey) -> str:
    """``whpk_<base64>``: how a receiver is given ``key``."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def sign_v1a(key: Ed25519PrivateKey, message_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` value for one message signed with ed25519: ``v1a,<base64>``."""
    return "v1a," + base64.b64encode(key.sign(_content(message_id, timestamp, body))).decode()


def _verifies(keys: Sequence[Ed25519PublicKey], signatures: Sequence[bytes], message: bytes) -> bool:
    for signature in signatures:
        for key in keys:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return True
    return False


def verify_v1a(keys: Sequence[Ed25519PublicKey], message_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """Whether any ``v1a`` signature of ``header`` was made by the secret key of any of ``keys`` (rotation)
    over this message. The keys are public, so stopping at the first match tells an attacker nothing.
    The timestamp's age is not checked here."""
    return _verifies(keys, parse_header(header, "v1a"), _content(message_id, timestamp, body))


def fal_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs: its ``X-Fal-Webhook-Request-Id``, ``-User-Id`` and ``-Timestamp`` headers and the
    hex SHA-256 of the body, one per line (https://docs.fal.ai/model-apis/model-endpoints/webhooks,
    "Verifying Your Webhook")."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, timestamp, digest)).encode()


def sign_fal(key: Ed25519PrivateKey, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-Fal-Webhook-Signature`` value fal would send: the ed25519 signature in hex."""
    return key.sign(fal_message(request_id, user_id, timestamp, body)).hex()


def verify_fal(
    keys: Sequence[Ed25519PublicKey], request_id: str, user_id: str, timestamp: str, body: bytes, signature: str
) -> bool:
    """Whether ``signature`` (``X-Fal-Webhook-Signature``, hex) was made by any of ``keys`` over fal's
    message. A signature that is not hex verifies with nothing. The timestamp's age is not checked here."""
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        return False
    return _verifies(keys, [raw], fal_message(request_id, user_id, timestamp, body))
