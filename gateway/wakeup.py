"""Wakes the live streams when an event is stored: in this process directly, across replicas via Redis.

The signal carries no data. Streams read events from the job store by their global id, so a lost or
doubled signal can delay a stream (until its next heartbeat, when it reads anyway) but never makes it
skip or repeat an event. Redis pub/sub is only the "something new was stored" bell between replicas:
bursts of commits are coalesced into one ``PUBLISH`` at a time, at most one every 20 ms, off the
webhook's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ("Wakeup",)

logger = logging.getLogger(__name__)

_RECONNECT_SECONDS = 1.0
_PUBLISH_INTERVAL_SECONDS = 0.02
"""At most one signal per replica this often: a stream elsewhere hears of a commit within this plus a round
trip, and a replica writing a batch every few milliseconds does not signal each one (docs/benchmark.md)."""


class Wakeup:
    """One per app: :meth:`stored` after a commit; streams wait on :meth:`changed` and :attr:`closed`."""

    def __init__(self, redis_url: str | None = None, *, prefix: str = "gateway:", timeout: float = 2.0) -> None:
        self._changed = asyncio.Event()
        self.closed = asyncio.Event()
        """Set when the app shuts down: every stream ends so the server can stop."""
        self._redis_url = redis_url
        self._channel = f"{prefix}job-events"
        self._timeout = timeout
        self._me = uuid.uuid4().hex.encode()
        """This process's signature on its signals, so it does not wake itself twice."""
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening: Redis | None = None
        """The client :meth:`_listen` reads with, closed by :meth:`stop`."""

    def changed(self) -> asyncio.Event:
        """Set at the next :meth:`stored` (here or, with Redis, on any replica). Take it *before* reading
        the store: a commit between the read and the wait then still wakes the waiter."""
        return self._changed

    def stored(self) -> None:
        """Called after an event is committed: wake the local streams, and the other replicas'."""
        self._wake()
        if self._redis_url is not None:
            self._dirty.set()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self.closed.set()
        self._dirty.set()
        self._wake()

    async def start(self) -> None:
        if self._redis_url is None:
            return
        self._tasks = [asyncio.create_task(self._publish()), asyncio.create_task(self._listen())]

    async def stop(self) -> None:
        """End the loops and close their connections. The listening connection is closed here too, not
        only cancelled: redis-py may lose a cancellation that lands as a read completes (seen after the
        subscription's confirmation; redis/redis-py#2028), and the read it goes back to then ends on the
        closed connection instead of holding shutdown up until the timeout."""
        self.close()
        for task in self._tasks:
            task.cancel()
        if self._listening is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._listening.aclose()
        if self._tasks:
            # redis-py may turn a cancellation into a connection error; the loops then see ``closed``.
            await asyncio.wait(self._tasks, timeout=self._timeout)
        self._tasks = []

    def _client(self) -> Redis:
        assert self._redis_url is not None
        return Redis.from_url(self._redis_url, socket_connect_timeout=self._timeout, health_check_interval=15)

    async def _publish(self) -> None:
        """One PUBLISH at a time, then a pause; commits made meanwhile share the next one."""
        client = self._client()
        failing = False
        try:
            while not self.closed.is_set():
                await self._dirty.wait()
                self._dirty.clear()
                if self.closed.is_set():
                    return
                try:
                    async with asyncio.timeout(self._timeout):
                        await client.publish(self._channel, self._me)
                except (RedisError, OSError, TimeoutError) as error:
                    if not failing:
                        logger.warning(
                            "live streams: cannot signal other replicas (%s): they catch up at their next heartbeat",
                            type(error).__name__,
                        )
                    failing = True
                else:
                    if failing:
                        logger.warning("live streams: signalling other replicas again")
                        failing = False
                await asyncio.sleep(_PUBLISH_INTERVAL_SECONDS)
        finally:
            await client.aclose()

    async def _listen(self) -> None:
        """Wake the local streams on every other replica's signal; reconnect when Redis goes away."""
        failing = False
        while not self.closed.is_set():
            client = self._listening = self._client()
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    if failing:
                        logger.warning("live streams: hearing other replicas again")
                        failing = False
                        self._wake()  # signals may have been missed meanwhile: read the store now
                    async for message in pubsub.listen():
                        if message["type"] == "message" and message["data"] != self._me:
                            self._wake()
            except (RedisError, OSError) as error:
                if self.closed.is_set():  # stop() closed the connection under the read
                    return
                if not failing:
                    logger.warning(
                        "live streams: not hearing other replicas (%s): they show at each heartbeat",
                        type(error).__name__,
                    )
                failing = True
            finally:
                await client.aclose()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_RECONNECT_SECONDS):
                    await self.closed.wait()
