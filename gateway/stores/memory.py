"""The embedded stores, bounded, in this process's memory: idempotency keys and rate limit state.

Idempotency keys are kept as 64-bit hashes in generations. The newest is a set that takes new keys;
once it has lived an eighth of the TTL, or holds an eighth of the bound, it is frozen and a new one
starts. A frozen generation is packed off the event loop into an open-addressing table of 8-byte
integers (about 24 bytes a key, where a set of Python ints costs 70 and the earlier dictionary of
digests 164); until it is packed it answers as a set. A whole generation expires when its newest key is
older than the TTL, and the bound drops the oldest generation first. When a key is evicted early, or
two keys share a hash, the job store's unique constraints still decide what is a duplicate: this store
only saves them the work.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.gcra import gcra
from gateway.stores.base import RateDecision

__all__ = ("MemoryIdempotencyStore", "MemoryRateLimitStore")

_GENERATIONS = 8
"""How finely the TTL and the bound are cut: a key is remembered for at least the TTL and at most an
eighth longer, and the bound evicts an eighth of the keys at a time."""
_EMPTY = 0
_RELEASED = 1
"""Table slots: free, or freed by a release (a probe goes on past it). Hashes 0 and 1 are stored as 2."""


def _slot_value(value: int) -> int:
    return 2 if value in (_EMPTY, _RELEASED) else value


class _Table:
    """Hashes in an open-addressing table with linear probing, at most half full."""

    __slots__ = ("mask", "slots")

    def __init__(self, values: tuple[int, ...]) -> None:
        size = 1 << max(3, (2 * len(values) - 1).bit_length())
        self.mask = mask = size - 1
        self.slots = slots = array("q", bytes(8 * size))
        for value in values:  # Python bytecode: when this runs on a worker thread, the event loop gets turns
            value = _slot_value(value)
            position = value & mask
            while slots[position] != _EMPTY:
                position = (position + 1) & mask
            slots[position] = value

    def position(self, value: int) -> int | None:
        value = _slot_value(value)
        slots, mask = self.slots, self.mask
        position = value & mask
        while (found := slots[position]) != _EMPTY:
            if found == value:
                return position
            position = (position + 1) & mask
        return None


class _Generation:
    """Keys claimed in one slice of time: a set until it is packed into a :class:`_Table`."""

    __slots__ = ("count", "keys", "newest", "released", "table")

    def __init__(self, keys: set[int], newest: float) -> None:
        self.keys: set[int] | None = keys
        self.count = len(keys)
        self.newest = newest
        self.table: _Table | None = None
        self.released: list[int] = []
        """Released while being packed: taken out of the table once it is ready."""

    def __contains__(self, value: int) -> bool:
        if self.keys is not None:
            return value in self.keys
        assert self.table is not None
        return self.table.position(value) is not None

    def pack(self, table: _Table) -> None:
        """Answer from ``table`` (built from this generation's keys) from now on, and drop the set."""
        self.table, self.keys = table, None
        for value in self.released:
            self._free(table, value)
        self.released.clear()

    def discard(self, value: int) -> bool:
        """Forget ``value``; whether it was here."""
        if self.keys is not None:
            if value not in self.keys:
                return False
            self.keys.discard(value)
            self.released.append(value)
        elif self.table is None or not self._free(self.table, value):
            return False
        self.count -= 1
        return True

    @staticmethod
    def _free(table: _Table, value: int) -> bool:
        position = table.position(value)
        if position is None:
            return False
        table.slots[position] = _RELEASED
        return True


class MemoryIdempotencyStore:
    """:class:`~gateway.stores.base.IdempotencyStore` for one process (atomic: one event loop, no await).

    Keys are hashed with Python's own string hash, keyed at random per process (SipHash), so a sender
    cannot craft collisions; the hashes live only as long as the process.
    """

    def __init__(self, ttl_seconds: float, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._ttl = ttl_seconds
        self._max_keys = max_keys
        self._clock = clock
        self._span = ttl_seconds / _GENERATIONS
        self._capacity = max(1, max_keys // _GENERATIONS)
        self._frozen: list[_Generation] = []
        """Oldest first."""
        self._frozen_keys = 0
        self._current: set[int] = set()
        self._opened = self._newest = clock()

    async def claim(self, keys: Sequence[str]) -> bool:
        now = self._clock()
        self._expire(now)
        hashes = [hash(key) for key in keys]
        for value in hashes:
            if value in self._current:
                return False
            for generation in self._frozen:
                if value in generation:
                    return False
        self._remember(hashes, now)
        return True

    def note(self, keys: Sequence[str]) -> None:
        now = self._clock()
        self._expire(now)
        self._remember([hash(key) for key in keys], now)

    async def release(self, keys: Sequence[str]) -> None:
        for key in keys:
            value = hash(key)
            self._current.discard(value)
            for generation in self._frozen:
                if generation.discard(value):
                    self._frozen_keys -= 1

    async def count(self) -> int:
        self._expire(self._clock())
        return self._frozen_keys + len(self._current)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._frozen.clear()
        self._frozen_keys = 0
        self._current.clear()

    def _remember(self, hashes: list[int], now: float) -> None:
        if len(self._current) >= self._capacity or now - self._opened >= self._span:
            self._freeze(now)
        self._current.update(hashes)
        self._newest = now
        while self._frozen and self._frozen_keys + len(self._current) > self._max_keys:
            self._frozen_keys -= self._frozen.pop(0).count

    def _freeze(self, now: float) -> None:
        """Start a new generation; pack the one before on a worker thread (a million keys take seconds)."""
        self._opened = now
        if not self._current:
            return
        generation = _Generation(self._current, self._newest)
        self._current = set()
        self._frozen.append(generation)
        self._frozen_keys += generation.count
        assert generation.keys is not None
        values = tuple(generation.keys)  # a snapshot: releases meanwhile change the set, not this
        packing = asyncio.get_running_loop().run_in_executor(None, _Table, values)
        packing.add_done_callback(lambda done: generation.pack(done.result()))

    def _expire(self, now: float) -> None:
        horizon = now - self._ttl
        while self._frozen and self._frozen[0].newest <= horizon:
            self._frozen_keys -= self._frozen.pop(0).count
        if self._current and self._newest <= horizon:
            self._current.clear()


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
