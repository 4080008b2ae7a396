"""The rate limit store contract, run over every backend (memory, and a real Redis; tests/backends.py) on
the real clock. What only Redis does is in test_redis_stores.py."""

from __future__ import annotations

import asyncio

from gateway.stores.base import RateLimitStore

MS = 1_000
INTERVAL = 100 * MS  # 10 per second
BURST = 3


async def test_the_burst_is_admitted_then_the_next_request_waits_one_interval(rate_limit_store: RateLimitStore) -> None:
    decisions = [await rate_limit_store.acquire("a", INTERVAL, BURST * INTERVAL) for _ in range(BURST + 1)]
    assert [decision.allowed for decision in decisions] == [True, True, True, False]
    # Each admitted request adds one interval of backlog; the refused one leaves it as it was.
    assert [round(d.backlog_us / INTERVAL, 1) for d in decisions[:3]] == [1.0, 2.0, 3.0]
    assert decisions[2].backlog_us - decisions[3].backlog_us < 50 * MS


async def test_waiting_what_the_refusal_implies_is_enough(rate_limit_store: RateLimitStore) -> None:
    for _ in range(BURST):
        await rate_limit_store.acquire("a", INTERVAL, BURST * INTERVAL)
    refused = await rate_limit_store.acquire("a", INTERVAL, BURST * INTERVAL)
    assert not refused.allowed
    wait_us = refused.backlog_us + INTERVAL - BURST * INTERVAL
    assert 0 < wait_us <= INTERVAL
    await asyncio.sleep(wait_us / 1_000_000 + 0.005)
    assert (await rate_limit_store.acquire("a", INTERVAL, BURST * INTERVAL)).allowed
    assert not (await rate_limit_store.acquire("a", INTERVAL, BURST * INTERVAL)).allowed


async def test_keys_have_separate_budgets(rate_limit_store: RateLimitStore) -> None:
    assert (await rate_limit_store.acquire("a", INTERVAL, INTERVAL)).allowed
    assert not (await rate_limit_store.acquire("a", INTERVAL, INTERVAL)).allowed
    assert (await rate_limit_store.acquire("b", INTERVAL, INTERVAL)).allowed


async def test_concurrent_requests_never_share_one_unit_of_budget(rate_limit_store: RateLimitStore) -> None:
    """Atomic decisions: 50 requests racing (on many Redis connections) for a burst of 10 get exactly 10."""
    decisions = await asyncio.gather(
        *(rate_limit_store.acquire("race", 10_000 * MS, 10 * 10_000 * MS) for _ in range(50))
    )
    assert sum(decision.allowed for decision in decisions) == 10
