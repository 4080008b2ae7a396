"""The NATS JetStream sink: every applied event published to ``gateway.jobs.<kind>.<status>``.

Each message carries ``Nats-Msg-Id`` = the event's stable id, so JetStream drops a re-publish inside the
stream's duplicate window (a retry after a lost ack, a lease taken over from a dead replica, a replay):
a consumer sees each event once. A delivery counts as delivered only once JetStream acknowledges that
the stream stored it (or already had it: a ``duplicate`` ack).

Every failure is answered :class:`Retry` (the events wait in order), except a message over the
server's ``max_payload``, which is :class:`Dead`: no retry can shrink it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from gateway.delivery.sink import Attempt, Dead, Delivered, Delivery, Retry

__all__ = (
    "DUPLICATE_WINDOW_SECONDS",
    "MAX_AGE_SECONDS",
    "JetStreamSink",
    "subject_token",
)

logger = logging.getLogger(__name__)

DUPLICATE_WINDOW_SECONDS = 3600.0
"""Duplicate window of a stream the gateway creates: covers retries after a lost ack and a lease taken
over from a dead replica. JetStream remembers every id for that long, so it is not days."""
MAX_AGE_SECONDS = 7 * 86400.0
"""How long a stream the gateway creates keeps messages, so it cannot fill the server's disk forever."""
ACK_TIMEOUT_SECONDS = 5.0
"""How long to wait for JetStream's ack (and for a connection) before answering Retry."""

_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(value: str) -> str:
    """``value`` as one NATS subject token: no ``.``, wildcard or whitespace (each becomes ``_``), never empty."""
    return _NOT_TOKEN.sub("_", value) or "_"


class JetStreamSink:
    """Publishes deliveries to JetStream; one connection per process, opened on first use and reopened
    after it closes. NATS' own client reconnects a dropped connection in the background."""

    name = "nats"

    def __init__(
        self,
        url: str,
        *,
        subject_prefix: str,
        stream: str,
        timeout: float = ACK_TIMEOUT_SECONDS,
    ) -> None:
        self._url = url
        self._prefix = subject_prefix
        self._stream = stream
        self._timeout = timeout
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None
        self._lock = asyncio.Lock()

    def subject(self, delivery: Delivery) -> str:
        """``<prefix>.<kind>.<status>``, e.g. ``gateway.jobs.image.completed``."""
        return f"{self._prefix}.{subject_token(delivery.kind)}.{subject_token(delivery.status)}"

    async def send(self, delivery: Delivery) -> Attempt:
        headers = {"Nats-Msg-Id": delivery.event_id, "Content-Type": "application/json"}
        if delivery.traceparent:
            headers["traceparent"] = delivery.traceparent
        try:
            jetstream = await self._connected()
        except TimeoutError:
            return Retry(f"NATS did not answer within {self._timeout:g} s")
        except (nats.errors.Error, OSError) as error:
            # Never the URL: it may carry credentials.
            return Retry(f"NATS unavailable: {type(error).__name__}: {error}")
        try:
            ack = await jetstream.publish(self.subject(delivery), delivery.body, timeout=self._timeout, headers=headers)
        except nats.errors.MaxPayloadError as error:
            return Dead(f"the event is larger than the NATS server's max_payload: {error}")
        except nats.js.errors.NoStreamResponseError:
            # No stream took the subject: JetStream restarted without it, or someone deleted it. Make sure
            # it exists again before the retry.
            self._jetstream = None
            return Retry(f"no JetStream stream answered for {self.subject(delivery)}")
        except (TimeoutError, nats.errors.TimeoutError):
            return Retry(f"no JetStream ack within {self._timeout:g} s")
        except nats.js.errors.APIError as error:
            return Retry(f"JetStream refused the message: {error}")
        except (nats.errors.Error, OSError) as error:
            await self._drop()
            return Retry(f"NATS unavailable: {type(error).__name__}: {error}")
        if ack.duplicate:
            logger.debug("JetStream already had %s (stream %s, seq %s)", delivery.event_id, ack.stream, ack.seq)
        return Delivered()

    async def _connected(self) -> JetStreamContext:
        """The JetStream context, connecting and making sure the stream exists first if needed."""
        if self._jetstream is not None and self._client is not None and not self._client.is_closed:
            return self._jetstream
        async with self._lock:
            if self._client is None or self._client.is_closed:
                self._client = await self._connect()
                self._jetstream = None
            if self._jetstream is None:
                jetstream = self._client.jetstream(timeout=self._timeout)
                await self._ensure_stream(jetstream)
                self._jetstream = jetstream
            return self._jetstream

    async def _connect(self) -> Client:
        """A new connection, or ``TimeoutError`` when NATS does not answer in time.

        Once connected, the client reconnects by itself for as long as it takes (requests meanwhile time
        out: Retry). Its first connection would try forever too, hence the deadline here.
        """
        client = Client()
        try:
            await asyncio.wait_for(
                client.connect(
                    self._url,
                    connect_timeout=max(1, math.ceil(self._timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=_log_error,
                    disconnected_cb=self._log_disconnected,
                    reconnected_cb=_log_reconnected,
                ),
                self._timeout,
            )
        except BaseException:
            await client.close()
            raise
        return client

    async def _ensure_stream(self, jetstream: JetStreamContext) -> None:
        """Create the stream unless it, or another stream covering the subjects, already exists.

        An operator may pre-create the stream (any name, any limits) to choose its storage, retention
        and duplicate window: the gateway then publishes into it and never changes it.
        """
        subjects = f"{self._prefix}.>"
        try:
            await jetstream.stream_info(self._stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        try:
            await jetstream.add_stream(
                StreamConfig(
                    name=self._stream,
                    subjects=[subjects],
                    storage=StorageType.FILE,
                    duplicate_window=DUPLICATE_WINDOW_SECONDS,
                    max_age=MAX_AGE_SECONDS,
                )
            )
            logger.warning("created JetStream stream %s for %s", self._stream, subjects)
        except nats.js.errors.BadRequestError as error:
            # Most likely another stream already covers the subjects (JetStream refuses overlaps): the
            # publishes go there. If none does, the next publish gets no stream and answers Retry.
            logger.warning("did not create JetStream stream %s for %s: %s", self._stream, subjects, error)

    async def _drop(self) -> None:
        """Forget a broken connection; the next send opens a new one."""
        if (client := await self._detach()) is not None:
            try:
                await client.close()
            except (nats.errors.Error, OSError) as error:
                logger.debug("closing a broken NATS connection failed: %s", error)

    async def _detach(self) -> Client | None:
        """Take the connection away from the sink (the next send opens a new one); ``None``: none was open."""
        async with self._lock:
            client, self._client, self._jetstream = self._client, None, None
        return client if client is not None and not client.is_closed else None

    async def _log_disconnected(self) -> None:
        # Only an established connection that drops is news: not a failed first attempt, not close().
        if self._client is not None:
            logger.warning("disconnected from NATS; reconnecting in the background")

    async def close(self) -> None:
        """Flush what is in flight and close the connection."""
        if (client := await self._detach()) is not None:
            try:
                await client.drain()
            except (nats.errors.Error, OSError, TimeoutError) as error:
                logger.warning("closing the NATS connection failed: %s", error)


async def _log_error(error: Exception) -> None:
    logger.warning("NATS error: %s", error)


async def _log_reconnected() -> None:
    logger.warning("reconnected to NATS")
