"""The Redis rate limit store: GCRA state shared by every replica, one atomic round trip per decision.

The decision runs in a Lua script, which Redis executes atomically (no command of another replica runs
between its read and its write), on Redis's own clock (``TIME``), so replicas whose clocks disagree still
share one budget. The script is sent once, then called by its SHA1 (EVALSHA; sent again if a restarted
Redis forgot it). A key expires (``SET ... PX``) when its TAT passes, from when it says no more than an
absent key. Every call has a timeout and no retry: a failing Redis must cost a request milliseconds, and
the limiter's ``GATEWAY_RATE_LIMIT_ON_ERROR`` policy then decides.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.stores.base import RateDecision, StoreUnavailable

__all__ = ("RedisRateLimitStore",)

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


class RedisRateLimitStore:
    """:class:`~gateway.stores.base.RateLimitStore` on Redis (redis-py asyncio).

    ``timeout`` bounds each call as a whole (waiting for a pooled connection, connecting, the round trip);
    ``max_connections`` bounds the pool, so a flood cannot open a connection per request.
    """

    def __init__(self, url: str, *, prefix: str = "gateway:", timeout: float = 0.25, max_connections: int = 64) -> None:
        self._prefix = f"{prefix}ratelimit:"
        self._timeout = timeout
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
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
