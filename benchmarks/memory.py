"""Memory of the in-memory idempotency store holding a million distinct keys (``--memory``).

Claims 500,000 deliveries of two keys each (``webhook-id`` and event key, as the pipeline does), lets
the store pack its frozen generations, and reports the bytes traced by ``tracemalloc`` per key held,
against ``GATEWAY_IDEMPOTENCY_MAX_KEYS``'s default bound; then times a claim with the store full,
without ``tracemalloc`` (which slows allocation several times).
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

from gateway.config import Settings
from gateway.stores.memory import MemoryIdempotencyStore

__all__ = ("measure_idempotency_memory",)

_DELIVERIES = 500_000


def measure_idempotency_memory() -> dict[str, float]:
    """Bytes per key and microseconds per claim at a million keys; printed as it goes."""
    return asyncio.run(_measure())


async def _measure() -> dict[str, float]:
    max_keys = Settings().idempotency_max_keys
    print(f"memory: claiming {2 * _DELIVERIES:,} distinct keys (bound {max_keys:,}) ...", flush=True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = await _filled(max_keys)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    keys = await store.count()
    await store.close()
    store = await _filled(max_keys)
    started = time.perf_counter()
    for n in range(_DELIVERIES, _DELIVERIES + 50_000):
        await store.claim(_keys(n))
    claim_us = (time.perf_counter() - started) / 50_000 * 1e6
    print(
        f"memory: {keys:,} keys held in {used / 1e6:.1f} MB: {used / keys:.1f} bytes a key; "
        f"a claim with the store full takes {claim_us:.2f} us"
    )
    return {"keys": keys, "bytes": used, "bytes_per_key": used / keys, "claim_us": claim_us}


async def _filled(max_keys: int) -> MemoryIdempotencyStore:
    store = MemoryIdempotencyStore(ttl_seconds=72 * 3600, max_keys=max_keys)
    for n in range(_DELIVERIES):
        await store.claim(_keys(n))
        if n % 1000 == 0:
            await asyncio.sleep(0)  # the packing threads' callbacks run on this loop, as in the server
    for _ in range(600):  # packed, as in a running server
        if all(generation.table is not None for generation in store._frozen):
            return store
        await asyncio.sleep(0.05)
    raise RuntimeError("the store's generations were not packed within 30 s")


def _keys(n: int) -> list[str]:
    return [f"delivery:msg_{n:024d}", f"event:image:bench-{n:08x}:completed:2026-11-26T10:00:00.000000+00:00"]
