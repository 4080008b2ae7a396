"""Two PostgreSQL replicas delivering one outbox under a storm of webhooks; the trace context each row
keeps. The contract every outbox keeps is test_outbox_contract.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry

from gateway.config import PostgresDatabase, Settings
from gateway.http.app import create_app
from gateway.outbox import current_traceparent
from tests.conftest import SECRET, completed_image, progress
from tests.delivery.test_delivery import forwarding
from tests.receiver import Receiver


async def test_two_postgres_replicas_never_deliver_an_event_twice(database_url: str, tmp_path: Any) -> None:
    """Two gateways on one PostgreSQL, a storm of webhooks spread over both, a receiver that is slow and
    fails some first attempts: every applied event arrives once, each job's in order, and both replicas
    delivered (so they really competed for the outbox)."""
    receiver = Receiver(delay=0.01)
    receiver.policy = lambda event, count: 503 if count == 1 and event["sequence"] % 5 == 0 else 204
    await receiver.start()
    # A delivery cut off by its timeout is retried (at least once, as documented) though the receiver took it:
    # a second copy this test would count as a double claim. 10 s, so a loaded machine's stalls never do that.
    base = forwarding(
        Settings(webhook_secret=SECRET, database=PostgresDatabase(database_url)), receiver, forward_timeout_seconds=10.0
    )
    registries = [CollectorRegistry(), CollectorRegistry()]
    statuses = ("pending", "generating", "completed")
    try:
        async with (
            AsyncTestClient(app=create_app(base, registry=registries[0])) as one,
            AsyncTestClient(app=create_app(replace(base, migrate_on_start=False), registry=registries[1])) as two,
        ):

            async def job(n: int) -> None:
                for minute, status in enumerate(statuses):
                    client = (one, two)[(n + minute) % 2]
                    timestamp = f"2025-10-21T16:{minute:02d}:00Z"
                    payload = (
                        completed_image(f"storm-{n}", timestamp)
                        if status == "completed"
                        else progress(status, f"storm-{n}", timestamp)
                    )
                    response = await client.post(
                        "/api/webhooks/image-completion", json=payload, headers={"X-Webhook-Secret": SECRET}
                    )
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(job(n) for n in range(40)))
            expected = 40 * len(statuses)
            await receiver.wait_until(lambda: len(receiver.accepted) >= expected, timeout=30)
            await asyncio.sleep(0.5)
    finally:
        await receiver.stop()
    ids = receiver.accepted_ids()
    assert len(ids) == expected
    assert len(set(ids)) == expected, "an event was delivered twice"
    for n in range(40):
        assert [a.event["status"] for a in receiver.accepted if a.event["job_id"] == f"storm-{n}"] == list(statuses)
    delivered = [
        registry.get_sample_value("gateway_deliveries_total", {"sink": "http", "result": "delivered"}) or 0
        for registry in registries
    ]
    assert sum(delivered) == expected
    assert min(delivered) > 0, f"one replica delivered nothing: {delivered}"


@pytest.mark.parametrize("sampled", [True, False])
def test_the_stored_traceparent_is_the_current_spans(sampled: bool) -> None:
    """The W3C header of the webhook's span, byte for byte; nothing outside a span."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    span = NonRecordingSpan(SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, flags))
    assert current_traceparent() is None
    with trace.use_span(span):
        assert current_traceparent() == f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0{int(sampled)}"
