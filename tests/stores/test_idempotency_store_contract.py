"""The idempotency store contract: atomic claims, release, count; run over every backend (memory, and a
real Redis; tests/backends.py). Expiry and each backend's failures are in test_memory_store.py and
test_redis_stores.py."""

from __future__ import annotations

import asyncio

from gateway.stores.base import IdempotencyStore


async def test_one_of_many_concurrent_claims_wins(idempotency_store: IdempotencyStore) -> None:
    wins = await asyncio.gather(*(idempotency_store.claim(["event:a", "delivery:1"]) for _ in range(50)))
    assert wins.count(True) == 1


async def test_any_known_key_fails_the_claim_and_remembers_nothing_new(idempotency_store: IdempotencyStore) -> None:
    assert await idempotency_store.claim(["delivery:1"])
    assert not await idempotency_store.claim(["event:b", "delivery:1"])
    assert await idempotency_store.claim(["event:b"])


async def test_a_released_claim_can_be_claimed_again(idempotency_store: IdempotencyStore) -> None:
    assert await idempotency_store.claim(["event:a", "delivery:1"])
    await idempotency_store.release(["event:a", "delivery:1"])
    assert await idempotency_store.claim(["event:a", "delivery:1"])


async def test_count_reports_the_keys_claimed(idempotency_store: IdempotencyStore) -> None:
    for number in range(5):
        assert await idempotency_store.claim([f"event:{number}", f"delivery:{number}"])
    await idempotency_store.release(["event:4", "delivery:4"])
    assert await idempotency_store.count() == 8


async def test_count_includes_the_keys_noted_without_a_claim(idempotency_store: IdempotencyStore) -> None:
    """With a job store that decides duplicates itself nothing is claimed: the deliveries it recorded are
    noted, and counted beside the claims (Redis adds a second's notes in one round trip)."""
    assert await idempotency_store.claim(["event:0", "delivery:0"])
    for number in range(1, 4):
        idempotency_store.note([f"event:{number}", f"delivery:{number}"])
    async with asyncio.timeout(10):
        while await idempotency_store.count() != 8:
            await asyncio.sleep(0.1)
