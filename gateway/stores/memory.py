"""The embedded idempotency store: a bounded, expiring set of keys in this process's memory.

Keys are kept as 16-byte BLAKE2b digests in insertion order, which is also expiry order (one TTL for
all), so expiring and evicting are both pops from the front. When the bound evicts a key before its TTL,
the job store's unique constraint still recognises the duplicate: this store only saves it the work.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

__all__ = ("MemoryIdempotencyStore",)


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
