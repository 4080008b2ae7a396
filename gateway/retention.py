"""Retention: finished records older than ``GATEWAY_RETENTION_DAYS`` are deleted, off the request path.

A background task of the app's lifespan wakes every :data:`INTERVAL_SECONDS`, and each of its pruners
deletes what finished before the cut-off in batches of :data:`BATCH_SIZE`, so a store's lock or
transaction is held for one small batch at a time and webhooks keep flowing in between. A failing
store is logged and counted, and tried again at the next wake-up: retention never stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

from gateway.stores.base import StoreUnavailable

__all__ = ("BATCH_SIZE", "INTERVAL_SECONDS", "Pruner", "Retention")

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 600.0
"""How often retention runs (and once at start-up)."""
BATCH_SIZE = 500
"""Most records deleted in one store transaction."""
_PAUSE_SECONDS = 0.05
"""Breathing room between two batches, so a large backlog never monopolises a store."""

Prune = Callable[[datetime, int], Awaitable[int]]
Pruner = tuple[str, Prune]
"""A name (the ``target`` label of ``gateway_retention_pruned_total``) and ``prune(before, limit)``,
which deletes at most ``limit`` records finished before ``before`` and returns how many it deleted."""


class Retention:
    """Runs every pruner until nothing older than the cut-off is left, then sleeps."""

    def __init__(
        self,
        days: int,
        pruners: Sequence[Pruner],
        pruned: Counter,
        on_failure: Callable[[StoreUnavailable], None],
        *,
        interval: float = INTERVAL_SECONDS,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._age = timedelta(days=days)
        self._pruners = tuple(pruners)
        self._pruned = {name: pruned.labels(name) for name, _ in self._pruners}
        self._on_failure = on_failure
        self._interval = interval
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-retention")

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run_once(self, now: datetime | None = None) -> dict[str, int]:
        """Prune everything that finished before ``now`` minus the retention; how many records each deleted."""
        before = (now or datetime.now(UTC)) - self._age
        deleted: dict[str, int] = {}
        for name, prune in self._pruners:
            total = 0
            try:
                while True:
                    count = await prune(before, self._batch_size)
                    total += count
                    self._pruned[name].inc(count)
                    if count < self._batch_size:
                        break
                    await asyncio.sleep(_PAUSE_SECONDS)
            except StoreUnavailable as error:
                self._on_failure(error)
                logger.warning("retention: pruning %s failed (%s); trying again in %.0f s", name, error, self._interval)
            deleted[name] = total
            if total:
                logger.info("retention: deleted %d %s finished before %s", total, name, before.isoformat())
        return deleted

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._interval)
