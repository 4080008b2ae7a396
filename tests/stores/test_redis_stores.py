"""What only the Redis stores do: keys that expire on their own, replicas sharing one Redis, an unreachable
Redis failing fast; on a real Redis. The contracts are test_idempotency_store_contract.py and
test_ratelimit_store_contract.py."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as redis

from gateway.stores.base import StoreUnavailable
from tests.backends import redis_idempotency_store, redis_rate_limit_store
from tests.conftest import free_port
from tests.stores.test_ratelimit_store_contract import BURST, INTERVAL, MS


async def test_redis_keys_expire_after_the_ttl(redis_url: str, redis_prefix: str) -> None:
    store = redis_idempotency_store(redis_url, redis_prefix, ttl_seconds=1)
    try:
        assert await store.claim(["event:a"])
        assert not await store.claim(["event:a"])
        await asyncio.sleep(1.1)
        assert await store.claim(["event:a"])
    finally:
        await store.close()


async def test_an_unreachable_redis_is_store_unavailable_within_the_timeout() -> None:
    store = redis_idempotency_store(f"redis://127.0.0.1:{free_port()}/0", "test:unreachable:", timeout=0.25)
    for call in (store.claim(["event:a"]), store.release(["event:a"]), store.count(), store.ping()):
        with pytest.raises(StoreUnavailable):
            await call
    await store.close()


async def test_replicas_sharing_one_redis_share_one_budget(redis_url: str, redis_prefix: str) -> None:
    first = redis_rate_limit_store(redis_url, redis_prefix)
    second = redis_rate_limit_store(redis_url, redis_prefix)
    try:
        assert (await first.acquire("a", 10_000 * MS, 20_000 * MS)).allowed
        assert (await second.acquire("a", 10_000 * MS, 20_000 * MS)).allowed
        assert not (await first.acquire("a", 10_000 * MS, 20_000 * MS)).allowed
        assert not (await second.acquire("a", 10_000 * MS, 20_000 * MS)).allowed
    finally:
        await first.close()
        await second.close()


async def test_redis_keys_expire_when_the_budget_is_whole_again(redis_url: str, redis_prefix: str) -> None:
    """Idle senders cost Redis nothing: each key lives until its TAT, no longer."""
    store = redis_rate_limit_store(redis_url, redis_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        await store.acquire("sender", INTERVAL, BURST * INTERVAL)
        await store.acquire("sender", INTERVAL, BURST * INTERVAL)
        # The TTL first: scanning a busy shared Redis for the prefix can itself take longer than 100 ms.
        assert 100 < await client.pttl(f"{redis_prefix}ratelimit:sender") <= 200
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*", count=1000)]
        assert keys in ([f"{redis_prefix}ratelimit:sender".encode()], [])  # [] if it already expired
        await asyncio.sleep(0.25)
        assert await client.exists(f"{redis_prefix}ratelimit:sender") == 0
    finally:
        await store.close()
        await client.aclose()


async def test_an_unreachable_redis_fails_fast_as_store_unavailable() -> None:
    store = redis_rate_limit_store(f"redis://127.0.0.1:{free_port()}/0", "test:unreachable:", timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as failure:
            await store.acquire("a", INTERVAL, INTERVAL)
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
    assert (failure.value.store, failure.value.operation) == ("ratelimit", "acquire")
    assert time.monotonic() - started < 1.5
