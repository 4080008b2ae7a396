"""The in-memory idempotency store: atomic claims, expiry after the TTL, a hard bound on keys."""

from __future__ import annotations

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


async def test_any_known_key_makes_the_claim_fail_and_remembers_nothing_new() -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60, max_keys=100)
    assert await store.claim(["delivery:1"])
    assert not await store.claim(["event:b", "delivery:1"])
    assert await store.claim(["event:b"])


async def test_release_forgets_a_claim() -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60, max_keys=100)
    assert await store.claim(["event:a", "delivery:1"])
    await store.release(["event:a", "delivery:1"])
    assert await store.claim(["event:a", "delivery:1"])


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
