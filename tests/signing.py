"""The tests' one Standard Webhooks signer: the ``standardwebhooks`` library, as a sender would sign."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook, hmac_data

__all__ = ("sign",)


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """The ``v1`` signature of ``body`` under ``key``, as sent in ``webhook-signature``.

    Made by ``Webhook(key).sign``, which takes the timestamp as a moment and the body as text. The fuzz
    tests also sign what no conforming sender sends (a timestamp that is not plain decimal seconds, a
    body that is not UTF-8): those are signed with the library's own HMAC over the specification's
    ``id.timestamp.body``, the same bytes the gateway checks.
    """
    if _plain_seconds(timestamp):
        try:
            text = body.decode()
        except UnicodeDecodeError:
            pass
        else:
            return Webhook(key).sign(msg_id, datetime.fromtimestamp(int(timestamp), UTC), text)
    digest = hmac_data(key, f"{msg_id}.{timestamp}.".encode() + body)
    return f"v1,{base64.b64encode(digest).decode()}"


def _plain_seconds(timestamp: str) -> bool:
    """Whether the library writes ``timestamp`` back as it is: decimal seconds, no sign or leading zero."""
    return timestamp.isascii() and timestamp.isdecimal() and len(timestamp) <= 11 and str(int(timestamp)) == timestamp
