"""Standard Webhooks signatures: ``whsec_`` keys, signing, and verifying with several keys.

A signature is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``; a ``webhook-signature`` header holds
one or more, separated by spaces. This module imports nothing else of the gateway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

__all__ = ("KEY_PREFIX", "MIN_KEY_BYTES", "InvalidKey", "parse_header", "parse_key", "sign", "verify")

KEY_PREFIX = "whsec_"
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


def _digest(key: bytes, message_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, b"%s.%s.%s" % (message_id.encode(), timestamp.encode(), body), hashlib.sha256).digest()


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``v1,<base64>``.

    ``timestamp`` is the ``webhook-timestamp`` header's text (seconds since the epoch).
    """
    return "v1," + base64.b64encode(_digest(key, message_id, timestamp, body)).decode()


def parse_header(header: str) -> list[bytes]:
    """The ``v1`` signatures of a ``webhook-signature`` header, decoded, in order.

    Tokens of another version (``v1a``, ...), without a comma, or not strictly base64 are skipped: an
    empty list means the header holds nothing to check.
    """
    found = []
    for token in header.split():
        version, comma, encoded = token.partition(",")
        if not comma or version != "v1":
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
