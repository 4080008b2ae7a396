"""What only the in-memory idempotency store does: expiry after the TTL on its clock, a hard bound on keys,
generations packed on threads, its memory per key. Its claims keep the contract of
test_idempotency_store_contract.py."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from gateway.stores.memory import MemoryIdempotencyStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_claimed_key_is_a_duplicate_until_it_expires() -> None:
    clock = Clock()
    store = MemoryIdempotencyStore(ttl_seconds=60, max_keys=100, clock=clock)
    assert await store.claim(["event:a"])
    assert not await store.claim(["event:a"])
    clock.now += 59
    assert not await store.claim(["event:a"])
    clock.now += 2
    assert await store.claim(["event:a"])


async def test_the_bound_evicts_the_oldest_keys() -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60, max_keys=3)
    for key in ("k1", "k2", "k3", "k4"):
        assert await store.claim([key])
    assert await store.count() == 3
    assert await store.claim(["k1"])  # evicted, so new again
    assert not await store.claim(["k4"])


async def test_count_drops_expired_keys() -> None:
    clock = Clock()
    store = MemoryIdempotencyStore(ttl_seconds=10, max_keys=100, clock=clock)
    await store.claim(["a"])
    clock.now += 5
    await store.claim(["b"])
    clock.now += 6
    assert await store.count() == 1


async def _packed(store: MemoryIdempotencyStore) -> None:
    """Let the worker threads pack frozen generations and their callbacks run on this loop."""
    for _ in range(200):
        await asyncio.sleep(0.01)
        if all(generation.table is not None for generation in store._frozen):
            return
    raise AssertionError("frozen generations were not packed within 2 s")


async def test_keys_stay_known_after_their_generation_is_packed() -> None:
    clock = Clock()
    store = MemoryIdempotencyStore(ttl_seconds=80, max_keys=1000, clock=clock)
    early = [f"event:{n}" for n in range(300)]
    for key in early:
        assert await store.claim([key])
    clock.now += 11  # past an eighth of the TTL: the next claim freezes the first generation
    assert await store.claim(["event:late"])
    await _packed(store)
    assert all([not await store.claim([key]) for key in early])
    await store.release(["event:7"])
    assert await store.claim(["event:7"])
    assert await store.count() == 301


async def test_a_key_released_while_its_generation_is_packed_is_forgotten() -> None:
    clock = Clock()
    store = MemoryIdempotencyStore(ttl_seconds=80, max_keys=1000, clock=clock)
    assert await store.claim(["event:a", "delivery:1"])
    clock.now += 11
    assert await store.claim(["event:b"])  # freezes the first generation; packing starts on a thread
    await store.release(["event:a", "delivery:1"])  # before the packed table is in place
    await _packed(store)
    assert await store.claim(["event:a", "delivery:1"])


@pytest.mark.load  # 100,000 claims under tracemalloc: the fast subset's slowest test by far, in CPU
async def test_keys_cost_about_24_bytes_each() -> None:
    """The bound is in keys; what that costs in bytes is what operators size memory by (docs/reference)."""
    store = MemoryIdempotencyStore(ttl_seconds=3600, max_keys=100_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(50_000):
            await store.claim([f"delivery:msg_{n}", f"event:image:job-{n}:completed"])
            if n % 5000 == 0:
                await asyncio.sleep(0)
        await _packed(store)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert await store.count() == 100_000
    assert used / 100_000 < 40, f"{used / 100_000:.1f} bytes a key"
