"""The Redis stores shared by every replica: rate limit state and idempotency claims.

Rate limits: GCRA state, one atomic round trip per decision.

The decision runs in a Lua script, which Redis executes atomically (no command of another replica runs
between its read and its write), on Redis's own clock (``TIME``), so replicas whose clocks disagree still
share one budget. The script is sent once, then called by its SHA1 (EVALSHA; sent again if a restarted
Redis forgot it). A key expires (``SET ... PX``) when its TAT passes, from when it says no more than an
absent key. Every call has a timeout and no retry: a failing Redis must cost a request milliseconds, and
the limiter's ``GATEWAY_RATE_LIMIT_ON_ERROR`` policy then decides.

Idempotency: every key of a claim is set with ``SET ... PX`` (the TTL) in one Lua script, only if none
exists, so two replicas racing for one delivery cannot both win. A failed webhook's claim is deleted, so
the sender's retry is processed. The keys hold BLAKE2b digests, not the payload's identifiers. With a job
store that decides duplicates itself (PostgreSQL) nothing is claimed: the deliveries it recorded are only
counted, a second's worth in one round trip off the webhooks' path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.stores.base import RateDecision, StoreUnavailable

__all__ = ("RedisIdempotencyStore", "RedisRateLimitStore")

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The same arithmetic as gateway.ingest.ratelimit.gcra, in integer microseconds.
# Returns {allowed (0 or 1), backlog}: how far the TAT is ahead of now after the decision.
_GCRA = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local backlog = tat + interval - now
if backlog > tolerance then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', math.ceil(backlog / 1000))
return {1, backlog}
"""


# KEYS: the claim's keys, then the counting bucket. ARGV: the TTL in ms, the bucket's own TTL in ms.
# Returns 1 when claimed, 0 (and nothing written) when any key was already there.
_CLAIM = """
local claim = #KEYS - 1
for i = 1, claim do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return 0
  end
end
for i = 1, claim do
  redis.call('SET', KEYS[i], '1', 'PX', ARGV[1])
end
redis.call('INCRBY', KEYS[#KEYS], claim)
redis.call('PEXPIRE', KEYS[#KEYS], ARGV[2])
return 1
"""

# KEYS: the buckets covering the TTL. Sums their counts (claims in that span, released ones removed).
_COUNT = """
local total = 0
for _, value in ipairs(redis.call('MGET', unpack(KEYS))) do
  total = total + (tonumber(value) or 0)
end
return total
"""

_BUCKETS = 24
"""Claims are counted in this many time buckets per TTL: ``count`` over-reports by at most one bucket."""
_NOTE_SECONDS = 1.0
"""Keys noted (recorded without a claim) are added to the count at most this often."""


def _pool(url: str, timeout: float, max_connections: int, *, retries: int = 0) -> BlockingConnectionPool:
    """A bounded pool whose every step (waiting for a connection, connecting, a round trip) times out."""
    return BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
    )


class RedisIdempotencyStore:
    """:class:`~gateway.stores.base.IdempotencyStore` on Redis, shared by every replica.

    ``count`` reads a cheap approximation: claims are tallied per time bucket (a TTL/24 slice), and the
    buckets covering the TTL are summed; a key is counted until its bucket ages out, so the figure runs
    at most one bucket (about 1/24 of the TTL's claims) high, and never scans the keyspace.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int,
        prefix: str = "gateway:",
        timeout: float = 2.0,
        max_connections: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = f"{prefix}idempotency:"
        self._ttl_ms = ttl_seconds * 1000
        self._bucket_seconds = max(1.0, ttl_seconds / _BUCKETS)
        self._timeout = timeout
        self._clock = clock
        # One immediate retry on a broken connection (a pooled one whose Redis restarted), within the same
        # timeout. Should the first attempt have claimed after all, the retry sees a "duplicate" that the
        # pipeline then finds unrecorded in the job store, and processes anyway.
        self._pool = _pool(url, timeout, max_connections, retries=1)
        self._redis = Redis(connection_pool=self._pool)
        self._claim = self._redis.register_script(_CLAIM)
        self._count = self._redis.register_script(_COUNT)
        self._failing = False
        self._noted = 0
        """Keys noted since the last flush."""
        self._flushing: asyncio.Task[None] | None = None

    def _key(self, key: str) -> str:
        return self._prefix + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    def _bucket(self, offset: int = 0) -> str:
        return f"{self._prefix}count:{int(self._clock() // self._bucket_seconds) - offset}"

    @property
    def _bucket_ttl_ms(self) -> int:
        return self._ttl_ms + int(2000 * self._bucket_seconds)

    async def claim(self, keys: Sequence[str]) -> bool:
        claimed = await self._call(
            "claim",
            self._claim(keys=[*map(self._key, keys), self._bucket()], args=[self._ttl_ms, self._bucket_ttl_ms]),
        )
        return bool(claimed == 1)

    def note(self, keys: Sequence[str]) -> None:
        self._noted += len(keys)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_noted())

    async def _flush_noted(self) -> None:
        """Add the keys noted to the current bucket, once a second while there are any. A failing Redis
        loses that second's count (the gauge runs low), never a webhook."""
        try:
            while self._noted:
                await asyncio.sleep(_NOTE_SECONDS)
                await self._add_noted()
        finally:
            self._flushing = None

    async def _add_noted(self) -> None:
        noted, self._noted = self._noted, 0
        bucket = self._bucket()
        pipe = self._redis.pipeline(transaction=False)
        pipe.incrby(bucket, noted)
        pipe.pexpire(bucket, self._bucket_ttl_ms)
        with contextlib.suppress(StoreUnavailable):
            await self._call("note", pipe.execute())

    async def release(self, keys: Sequence[str]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(*map(self._key, keys))
        pipe.decrby(self._bucket(), len(keys))
        await self._call("release", pipe.execute())

    async def count(self) -> int:
        buckets = [self._bucket(offset) for offset in range(_BUCKETS + 1)]
        return max(0, int(await self._call("count", self._count(keys=buckets))))

    async def ping(self) -> None:
        await self._call("ping", self._redis.ping())

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
        if self._noted:
            await self._add_noted()
        await self._redis.aclose()
        await self._pool.aclose()

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                result = await call
        except Exception as error:
            # RedisError, OSError, TimeoutError, a client bug: the webhook gets 503, never a 500.
            if not self._failing:
                logger.error("idempotency store unavailable (%s failed: %s)", operation, type(error).__name__)
            self._failing = True
            raise StoreUnavailable("idempotency", operation) from error
        if self._failing:
            self._failing = False
            logger.warning("idempotency store answers again")
        return result


class RedisRateLimitStore:
    """:class:`~gateway.stores.base.RateLimitStore` on Redis (redis-py asyncio).

    ``timeout`` bounds each call as a whole (waiting for a pooled connection, connecting, the round trip):
    250 ms, not the store timeout, so a decision Redis cannot make quickly falls to
    ``GATEWAY_RATE_LIMIT_ON_ERROR`` instead of holding up every webhook (docs/rate-limiting.md).
    ``max_connections`` bounds the pool, so a flood cannot open a connection per request.
    """

    def __init__(self, url: str, *, prefix: str = "gateway:", timeout: float = 0.25, max_connections: int = 64) -> None:
        self._prefix = f"{prefix}ratelimit:"
        self._timeout = timeout
        self._pool = _pool(url, timeout, max_connections)
        self._redis = Redis(connection_pool=self._pool)
        self._gcra = self._redis.register_script(_GCRA)

    async def acquire(self, key: str, interval_us: int, tolerance_us: int) -> RateDecision:
        try:
            async with asyncio.timeout(self._timeout):
                allowed, backlog = await self._gcra(keys=[self._prefix + key], args=[interval_us, tolerance_us])
        except Exception as error:
            # Whatever went wrong (RedisError, OSError, TimeoutError, a client bug), the limiter's
            # GATEWAY_RATE_LIMIT_ON_ERROR policy must decide, never a 500.
            raise StoreUnavailable("ratelimit", "acquire") from error
        return RateDecision(allowed == 1, int(backlog))

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except Exception as error:
            raise StoreUnavailable("ratelimit", "ping") from error

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()
