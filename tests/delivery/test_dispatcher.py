"""The dispatcher's stop against a store slower than its grace: below HTTP, with a real SQLite outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry

from gateway.delivery import dispatcher as dispatcher_module
from gateway.delivery.dispatcher import Dispatcher
from gateway.delivery.schedule import RetrySchedule
from gateway.delivery.sink import Attempt, Delivered, Delivery
from gateway.kinds import KINDS
from gateway.model import JobEvent, Status
from gateway.outbox import DeliveryState, Outbox, OutboxWriter
from gateway.telemetry.metrics import Metrics, ModelLabels
from tests.backends import outbox_of, sqlite_job_store


class Sink:
    """Answers ``sent`` jobs' deliveries at once; holds every other one until the dispatcher cuts it off."""

    name = "http"

    def __init__(self) -> None:
        self.started: list[str] = []

    async def send(self, delivery: Delivery) -> Attempt:
        self.started.append(delivery.job_id)
        if delivery.job_id != "sent":
            await asyncio.Event().wait()
        return Delivered()

    async def close(self) -> None:
        return None


class SlowOutbox:
    """``outbox``, whose writes of delivered rows wait until ``landed`` is set (a store slower than the stop)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.landed = asyncio.Event()
        self.writing = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._outbox, name)

    async def delivered_many(self, ids: Sequence[int], owner: str, now: datetime) -> set[int]:
        self.writing.set()
        await self.landed.wait()
        kept: set[int] = await self._outbox.delivered_many(ids, owner, now)
        return kept


async def test_a_stop_frees_no_lease_before_the_delivered_rows_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while the store has not yet recorded a delivery the app received: no lease is freed, so
    no other dispatcher sends that row again meanwhile; once its write lands, it is delivered."""
    monkeypatch.setattr(dispatcher_module, "_STOP_GRACE_SECONDS", 0.2)
    store = sqlite_job_store(tmp_path / "gateway.db", outbox=OutboxWriter(("http",), None))
    await store.open()
    try:
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        for job in ("sent", "cut-off"):
            await store.apply(
                JobEvent(kind="image", job_id=job, status=Status.PENDING, timestamp=moment, received_at=moment)
            )
        rows = outbox_of(store)
        slow = SlowOutbox(rows)
        sink = Sink()
        metrics = Metrics(CollectorRegistry(), [kind.name for kind in KINDS], ModelLabels())
        dispatcher = Dispatcher(
            slow,  # type: ignore[arg-type]
            {"http": sink},
            RetrySchedule([1.0]),
            metrics,
            TracerProvider(sampler=ALWAYS_OFF).get_tracer("test"),
            concurrency=4,
            lease_seconds=600,
            recording=False,
        )
        dispatcher.start()
        async with asyncio.timeout(10):
            await slow.writing.wait()
            while len(sink.started) < 2:
                await asyncio.sleep(0.01)
        await dispatcher.stop()

        later = datetime.now(UTC) + timedelta(seconds=1)
        assert await rows.claim("survivor", ["http"], 10, 600, later) == []  # both rows still leased
        slow.landed.set()
        async with asyncio.timeout(10):
            page = rows.list_deliveries
            while not (await page(state=DeliveryState.DELIVERED, job_id="sent", limit=10, cursor=None)).deliveries:
                await asyncio.sleep(0.01)
        # the cut-off row is sent again once its lease expires, by whoever claims it then
        [again] = await rows.claim("survivor", ["http"], 10, 600, later + timedelta(seconds=600))
        assert again.delivery.job_id == "cut-off"
    finally:
        await store.close()
