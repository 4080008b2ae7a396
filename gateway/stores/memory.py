"""The embedded stores, bounded, in this process's memory: idempotency keys and rate limit state.

Idempotency keys are kept as 16-byte BLAKE2b digests in insertion order, which is also expiry order (one
TTL for all), so expiring and evicting are both pops from the front. When the bound evicts a key before
its TTL, the job store's unique constraint still recognises the duplicate: this store only saves it the
work.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.ingest.ratelimit import gcra
from gateway.stores.base import RateDecision

__all__ = ("MemoryIdempotencyStore", "MemoryRateLimitStore")


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


class MemoryIdempotencyStore:
    """:class:`~gateway.stores.base.IdempotencyStore` for one process (atomic: one event loop)."""

    def __init__(self, ttl_seconds: float, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._ttl = ttl_seconds
        self._max_keys = max_keys
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    async def claim(self, keys: Sequence[str]) -> bool:
        now = self._clock()
        self._expire(now)
        digests = [_digest(key) for key in keys]
        if any(digest in self._expiry for digest in digests):
            return False
        deadline = now + self._ttl
        for digest in digests:
            self._expiry[digest] = deadline
        while len(self._expiry) > self._max_keys:
            self._expiry.popitem(last=False)
        return True

    async def release(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._expiry.pop(_digest(key), None)

    async def count(self) -> int:
        self._expire(self._clock())
        return len(self._expiry)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._expiry.clear()

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            oldest = next(iter(expiry.values()))
            if oldest > now:
                return
            expiry.popitem(last=False)


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class MemoryRateLimitStore:
    """:class:`~gateway.stores.base.RateLimitStore` for one process (atomic: one event loop, no await).

    Holds one theoretical arrival time (TAT) per key, in least-recently-updated order. A key whose TAT has
    passed is the same as an unknown key, so idle keys at the front are forgotten on every call; past
    ``max_keys`` the least recently updated key is dropped too (that sender gets a fresh budget: the price
    of a hard bound, paid only under a flood of distinct senders).
    """

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], int] = _monotonic_us) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        """Microseconds, monotonic."""
        self._tats: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    async def acquire(self, key: str, interval_us: int, tolerance_us: int) -> RateDecision:
        now = self._clock()
        tats = self._tats
        decision, tat = gcra(tats.get(key), now, interval_us, tolerance_us)
        if tat is not None:
            tats[key] = tat
            tats.move_to_end(key)
            if len(tats) > self._max_keys:
                tats.popitem(last=False)
        while tats:
            oldest = next(iter(tats.values()))
            if oldest > now:
                break
            tats.popitem(last=False)
        return decision

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._tats.clear()
