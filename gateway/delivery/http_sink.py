"""Forwarding to the app's endpoint (``GATEWAY_FORWARD_URL``), signed as a Standard Webhooks sender.

Each request carries ``webhook-id`` (the event's stable id, so the app deduplicates retries and
replays), ``webhook-timestamp`` and, with ``GATEWAY_FORWARD_SIGNING_KEY``, ``webhook-signature:
v1,<base64 HMAC-SHA256 of "id.timestamp.body">``: any Standard Webhooks library verifies it. The
answer decides the outcome: 2xx delivered; timeout, connection error, 5xx, 408, 429 retried (honouring
``Retry-After``); 410 disables forwarding; any other answer dead-letters the event.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from opentelemetry import propagate

from gateway import __version__, signatures
from gateway.delivery.http_client import HttpClient
from gateway.delivery.sink import Attempt, Dead, Delivered, Delivery, Gone, Retry
from gateway.redact import shown_url

__all__ = ("HttpSink", "retry_after")

logger = logging.getLogger(__name__)

_RETRIED = frozenset({408, 429})


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), ``None`` if absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdecimal():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


class HttpSink:
    """:class:`~gateway.delivery.sink.Sink` POSTing each event to one URL over keep-alive connections.

    Redirects are not followed: a 3xx is the endpoint's misconfiguration, dead-lettered and visible.
    Proxy variables are not used; one set for the URL's scheme is warned about when the sink is built
    (docs/forwarding-client.md).
    """

    name = "http"

    def __init__(
        self, url: str, signing_key: bytes | None, timeout_seconds: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._shown = shown_url(url)
        """The endpoint with its passwords masked, for messages."""
        self._key = signing_key
        self._timeout = timeout_seconds
        self._clock = clock
        self._client = HttpClient(url, user_agent=f"gateway/{__version__}")
        scheme = urlsplit(url).scheme
        if urllib.request.getproxies().get(scheme):
            logger.warning(
                "%s_PROXY is set but forwarding does not use proxies: it connects to %s directly "
                "(docs/forwarding-client.md)",
                scheme.upper(),
                self._shown,
            )

    async def send(self, delivery: Delivery) -> Attempt:
        now = self._clock()
        timestamp = str(int(now))
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": timestamp,
        }
        if self._key is not None:
            headers["webhook-signature"] = signatures.sign(self._key, delivery.event_id, timestamp, delivery.body)
        propagate.inject(headers)  # the delivery span, so the app's trace continues the gateway's
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(delivery.body, headers)
        except TimeoutError:
            return Retry(f"no answer within {self._timeout:g} s")
        except OSError as error:
            return Retry(f"connection failed: {type(error).__name__}")
        code = response.status
        if 200 <= code < 300:
            return Delivered()
        if code == 410:
            return Gone(f"{self._shown} answered 410 Gone")
        if code >= 500 or code in _RETRIED:
            return Retry(f"HTTP {code}", retry_after(response.headers.get("retry-after"), self._clock()))
        return Dead(f"HTTP {code}")

    async def close(self) -> None:
        await self._client.close()
