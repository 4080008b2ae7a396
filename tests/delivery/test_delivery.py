"""Forwarding applied events to the app (issue 11): a real receiving HTTP server verifies every request
with the ``standardwebhooks`` library; the gateway runs in-process or as a real ``gateway serve``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from tests.conftest import SECRET, LiveServer, completed_image, failed, progress
from tests.receiver import FORWARD_KEY, Receiver

FAST = (0.05, 0.05, 0.05, 0.05, 0.05, 0.05)
"""A retry schedule of tiny delays, so retries happen within a test."""
LIFECYCLE = ("pending", "initializing", "generating", "saving", "completed")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


def forwarding(settings: Settings, receiver: Receiver, **changes: Any) -> Settings:
    defaults: dict[str, Any] = {
        "forward_url": receiver.url,
        "forward_signing_key": _key(),
        "forward_retry_schedule": FAST,
        "forward_timeout_seconds": 2.0,
    }
    return replace(settings, **{**defaults, **changes})


def _key() -> bytes:
    import base64

    return base64.b64decode(FORWARD_KEY.removeprefix("whsec_"))


async def post_lifecycle(client: AsyncTestClient[Any], job_id: str, statuses: tuple[str, ...] = LIFECYCLE) -> None:
    """The job's events in order, each acknowledged before the next is sent."""
    for minute, status in enumerate(statuses):
        timestamp = f"2025-10-21T16:{minute:02d}:00Z"
        payload = completed_image(job_id, timestamp) if status == "completed" else progress(status, job_id, timestamp)
        if status == "failed":
            payload = failed(job_id, timestamp)
        response = await client.post("/api/webhooks/image-completion", json=payload)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "applied"


async def until_settled(client: AsyncTestClient[Any], timeout: float = 15.0) -> None:
    """Wait until no delivery is pending (every result recorded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (await client.get("/api/deliveries", params={"state": "pending"})).json()["deliveries"]:
        assert asyncio.get_running_loop().time() < deadline, "deliveries still pending"
        await asyncio.sleep(0.02)


def in_job_order(receiver: Receiver, job_id: str) -> list[str]:
    return [arrival.event["status"] for arrival in receiver.accepted if arrival.event["job_id"] == job_id]


@pytest.fixture
def family(family_settings: Settings) -> Settings:
    return family_settings


async def test_every_event_arrives_once_in_job_order_after_retries(family: Settings, receiver: Receiver) -> None:
    """The receiver fails each event's first two attempts (503, then 429 with Retry-After: 0): after the
    retries every event has arrived exactly once by webhook-id, signed, each job's in the order applied."""
    receiver.policy = lambda event, count: 503 if count == 1 else ((429, {"retry-after": "0"}) if count == 2 else 204)
    jobs = [f"order-{n}" for n in range(4)]
    registry = CollectorRegistry()
    async with AsyncTestClient(app=create_app(forwarding(family, receiver), registry=registry)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await asyncio.gather(*(post_lifecycle(client, job) for job in jobs))
        expected = len(jobs) * len(LIFECYCLE)
        await receiver.wait_until(lambda: len(receiver.accepted) >= expected)
        await until_settled(client)
        await asyncio.sleep(0.2)  # anything doubled would arrive meanwhile
        metrics = (await client.get("/metrics")).text

    ids = receiver.accepted_ids()
    assert len(ids) == expected
    assert len(set(ids)) == expected, "an event was delivered twice"
    assert receiver.unverified == 0
    assert len(receiver.arrivals) == 3 * expected  # two failures, then the success, for every event
    for job in jobs:
        assert in_job_order(receiver, job) == list(LIFECYCLE)
        sequences = [a.event["sequence"] for a in receiver.accepted if a.event["job_id"] == job]
        assert sequences == sorted(sequences)
    first = receiver.accepted[0]
    assert first.webhook_id == first.event["event_id"] == f"evt_{first.event['sequence']}"
    assert {"job_id", "kind", "status", "timestamp", "received_at", "result"} <= set(first.event)
    assert f'gateway_deliveries_total{{result="delivered",sink="http"}} {float(expected)}' in metrics
    assert f'gateway_deliveries_total{{result="retried",sink="http"}} {float(2 * expected)}' in metrics
    assert 'gateway_delivery_backlog{sink="http"} 0.0' in metrics


async def test_a_refused_job_goes_dead_others_go_on_and_replay_delivers_it_once(
    settings: Settings, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """400 for one job: its events are dead-lettered (a dead one does not block its job's next), the other
    job is unaffected; once the receiver is fixed, replaying the dead letters delivers each once."""
    refused = {"bad-job"}
    receiver.policy = lambda event, count: 400 if event["job_id"] in refused else 204
    async with AsyncTestClient(app=create_app(forwarding(settings, receiver))) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "bad-job", ("pending", "generating", "failed"))
        await post_lifecycle(client, "good-job", ("pending", "generating", "completed"))
        await receiver.wait_until(lambda: len(receiver.arrivals) >= 6)
        await until_settled(client)
        assert in_job_order(receiver, "good-job") == ["pending", "generating", "completed"]
        assert in_job_order(receiver, "bad-job") == []
        assert len(receiver.arrivals) == 6  # a 400 is not retried

        dead = (await client.get("/api/deliveries", params={"state": "dead"})).json()["deliveries"]
        assert [d["status"] for d in dead] == ["failed", "generating", "pending"]
        assert {d["last_error"] for d in dead} == {"HTTP 400"}
        assert all(d["job_id"] == "bad-job" and d["attempts"] == 1 for d in dead)
        dead_ids = {d["event_id"] for d in dead}
        logged = [r for r in caplog.records if r.levelno == logging.ERROR and "dead-lettered" in r.getMessage()]
        assert {(r.__dict__["event_id"], r.__dict__["sink"], r.__dict__["job_id"]) for r in logged} == {
            (event_id, "http", "bad-job") for event_id in dead_ids
        }

        refused.clear()
        replayed = await client.post("/api/deliveries/replay", params={"state": "dead"})
        assert replayed.status_code == 200
        assert replayed.json() == {"replayed": 3}
        await receiver.wait_until(lambda: len(receiver.accepted) >= 6)
        await until_settled(client)
        assert in_job_order(receiver, "bad-job") == ["pending", "generating", "failed"]
        assert {a.webhook_id for a in receiver.accepted if a.event["job_id"] == "bad-job"} == dead_ids
        assert len(receiver.accepted) == 6
        assert (await client.get("/api/deliveries", params={"state": "dead"})).json()["deliveries"] == []
        delivered = (await client.get("/api/deliveries", params={"state": "delivered", "job_id": "bad-job"})).json()
        assert len(delivered["deliveries"]) == 3


async def test_replay_one_keeps_its_event_id_and_sequence(settings: Settings, receiver: Receiver) -> None:
    """Replaying a delivered event sends it again with its original webhook-id and sequence (the app's
    deduplication recognises it); an unknown id is a 404, a bad cursor or state a 400."""
    async with AsyncTestClient(app=create_app(forwarding(settings, receiver))) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "once", ("pending",))
        await receiver.wait_until(lambda: len(receiver.accepted) == 1)
        row = (await client.get("/api/deliveries")).json()["deliveries"][0]
        again = await client.post(f"/api/deliveries/{row['id']}/replay")
        assert again.status_code == 200
        assert again.json()["state"] == "pending"
        await receiver.wait_until(lambda: len(receiver.accepted) == 2)
        first, second = receiver.accepted
        assert first.webhook_id == second.webhook_id == row["event_id"]
        assert first.event["sequence"] == second.event["sequence"] == row["sequence"]
        assert (await client.post("/api/deliveries/999999/replay")).status_code == 404
        assert (await client.get("/api/deliveries", params={"cursor": "x"})).status_code == 400
        assert (await client.get("/api/deliveries", params={"state": "lost"})).status_code == 400
        assert (await client.post("/api/deliveries/replay", params={"state": "pending"})).status_code == 400


async def test_gone_disables_forwarding_until_re_enabled(
    settings: Settings, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """410 Gone stops forwarding (loudly: an error log and a gauge), keeps the events pending, and
    ``POST /api/deliveries/enable`` resumes it: nothing is lost."""
    gone = [True]
    receiver.policy = lambda event, count: 410 if gone[0] else 204
    async with AsyncTestClient(app=create_app(forwarding(settings, receiver))) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "gone-1", ("pending", "generating"))
        await receiver.wait_until(lambda: len(receiver.arrivals) >= 1)
        await asyncio.sleep(0.3)
        assert len(receiver.arrivals) == 1  # disabled: nothing more is sent
        [loud] = [r for r in caplog.records if "FORWARDING DISABLED" in r.getMessage()]
        assert loud.levelno == logging.ERROR
        assert "answered 410 Gone" in loud.getMessage()
        assert "/api/deliveries/enable" in loud.getMessage()
        metrics = (await client.get("/metrics")).text
        assert 'gateway_delivery_sink_disabled{sink="http"} 1.0' in metrics
        assert 'gateway_delivery_backlog{sink="http"} 2.0' in metrics
        pending = (await client.get("/api/deliveries", params={"state": "pending"})).json()["deliveries"]
        assert len(pending) == 2
        assert all(d["attempts"] == 0 for d in pending)  # an attempt at a gone endpoint is not counted

        gone[0] = False
        enabled = await client.post("/api/deliveries/enable", params={"sink": "http"})
        assert enabled.json() == {"sink": "http", "was_disabled": True}
        await receiver.wait_until(lambda: len(receiver.accepted) == 2)
        assert in_job_order(receiver, "gone-1") == ["pending", "generating"]
        assert (await client.post("/api/deliveries/enable", params={"sink": "smtp"})).status_code == 400


async def test_retry_schedule_exhausted_dead_letters(settings: Settings, receiver: Receiver) -> None:
    """A receiver that keeps failing: one attempt plus one per scheduled delay, then the dead letters."""
    receiver.policy = lambda event, count: 500
    app = create_app(forwarding(settings, receiver, forward_retry_schedule=(0.01, 0.01)))
    async with AsyncTestClient(app=app) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "always-failing", ("pending",))
        await receiver.wait_until(lambda: len(receiver.arrivals) == 3)
        await until_settled(client)
        [row] = (await client.get("/api/deliveries")).json()["deliveries"]
    assert len(receiver.arrivals) == 3
    assert row["state"] == "dead"
    assert row["attempts"] == 3
    assert row["last_error"] == "HTTP 500; retry schedule exhausted after 3 attempts"


async def test_only_the_configured_statuses_are_forwarded(settings: Settings, receiver: Receiver) -> None:
    """GATEWAY_FORWARD_STATUSES=completed,failed: progress events are applied but never forwarded."""
    statuses = frozenset({"completed", "failed"})
    async with AsyncTestClient(app=create_app(forwarding(settings, receiver, forward_statuses=statuses))) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "terminal-only")
        await receiver.wait_until(lambda: len(receiver.accepted) == 1)
        await until_settled(client)
    assert in_job_order(receiver, "terminal-only") == ["completed"]


async def test_forwarding_off_writes_no_outbox_row(settings: Settings) -> None:
    """Without GATEWAY_FORWARD_URL the ingest path writes nothing for delivery."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        await post_lifecycle(client, "quiet")
        assert (await client.get("/api/deliveries")).json() == {"deliveries": [], "next_cursor": None}
        assert "gateway_delivery_backlog{" not in (await client.get("/metrics")).text
    assert isinstance(settings.database, SqliteDatabase)
    with sqlite3.connect(settings.database.path) as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


async def test_the_delivery_span_links_to_the_webhooks_trace(settings: Settings, receiver: Receiver) -> None:
    """Each attempt is a span linked to the webhook request's span (from the sender's traceparent), and
    the forwarded request carries the delivery span's own traceparent."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    sender_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with AsyncTestClient(app=create_app(forwarding(settings, receiver), tracer_provider=provider)) as client:
        response = await client.post(
            "/api/webhooks/image-completion",
            json=progress("pending", "traced"),
            headers={"X-Webhook-Secret": SECRET, "traceparent": f"00-{sender_trace}-00f067aa0ba902b7-01"},
        )
        assert response.status_code == 200
        await receiver.wait_until(lambda: len(receiver.accepted) == 1)
        await until_settled(client)
    [delivery] = [span for span in spans.get_finished_spans() if span.name == "deliver http"]
    [link] = delivery.links
    assert format(link.context.trace_id, "032x") == sender_trace
    assert delivery.attributes is not None
    assert delivery.attributes["gateway.delivery.result"] == "delivered"
    forwarded = receiver.accepted[0].headers["traceparent"]
    assert forwarded.split("-")[1] == format(delivery.context.trace_id, "032x")


async def test_unrecorded_deliveries_still_send_a_traceparent_of_their_own(
    settings: Settings, receiver: Receiver
) -> None:
    """With no exporter nothing is recorded, yet each forwarded request carries a valid ``traceparent``: a
    fresh trace, one per delivery, flagged as the SDK flags a span its sampler drops (not sampled, so the
    app's parent-based sampler records nothing either)."""
    dropped = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test").start_span("dropped").get_span_context()
    sender_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with AsyncTestClient(app=create_app(forwarding(settings, receiver))) as client:
        for job in ("unrecorded-1", "unrecorded-2"):
            response = await client.post(
                "/api/webhooks/image-completion",
                json=progress("pending", job),
                headers={"X-Webhook-Secret": SECRET, "traceparent": f"00-{sender_trace}-00f067aa0ba902b7-01"},
            )
            assert response.status_code == 200
        await receiver.wait_until(lambda: len(receiver.accepted) == 2)
        await until_settled(client)
    parents = [request.headers["traceparent"].split("-") for request in receiver.accepted]
    for version, trace_id, span_id, flags in parents:
        assert version == "00"
        assert int(flags, 16) == dropped.trace_flags
        assert len(trace_id) == 32
        assert int(trace_id, 16) != 0
        assert trace_id != sender_trace
        assert len(span_id) == 16
        assert int(span_id, 16) != 0
    assert parents[0][1] != parents[1][1]


class CountingIds(IdGenerator):
    """Ids anyone can recognise: 1, 2, 3..."""

    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last

    def generate_trace_id(self) -> int:
        self.last += 1
        return self.last


async def test_unrecorded_deliveries_draw_their_ids_from_the_tracer_provider(
    settings: Settings, receiver: Receiver
) -> None:
    """An app given a provider that records nothing sends that provider's ids and flags, as its tracer would."""
    provider = TracerProvider(sampler=ALWAYS_OFF, id_generator=CountingIds())
    dropped = provider.get_tracer("test").start_span("dropped").get_span_context()
    async with AsyncTestClient(app=create_app(forwarding(settings, receiver), tracer_provider=provider)) as client:
        response = await client.post(
            "/api/webhooks/image-completion", json=progress("pending", "counted"), headers={"X-Webhook-Secret": SECRET}
        )
        assert response.status_code == 200
        await receiver.wait_until(lambda: len(receiver.accepted) == 1)
        await until_settled(client)
    _, trace_id, span_id, flags = receiver.accepted[0].headers["traceparent"].split("-")
    assert int(flags, 16) == dropped.trace_flags
    assert dropped.trace_id < int(trace_id, 16) < 1000
    assert dropped.span_id < int(span_id, 16) < 1000


@pytest.fixture
def killed(tmp_path: Path) -> Iterator[list[LiveServer]]:
    servers: list[LiveServer] = []
    yield servers
    for server in servers:
        if server.process.poll() is None:
            server.stop()


async def test_sigkill_with_deliveries_pending_loses_nothing(
    tmp_path: Path, receiver: Receiver, killed: list[LiveServer]
) -> None:
    """A real ``gateway serve`` killed with SIGKILL while its deliveries are failing: after a restart on
    the same database every acknowledged event is delivered, once."""
    down = [True]
    receiver.policy = lambda event, count: 503 if down[0] else 204
    env = {
        "WEBHOOK_SECRET": SECRET,
        "GATEWAY_FORWARD_URL": receiver.url,
        "GATEWAY_FORWARD_SIGNING_KEY": FORWARD_KEY,
        "GATEWAY_FORWARD_RETRY_SCHEDULE": ",".join(["0.1"] * 50),
    }
    server = await asyncio.to_thread(LiveServer, tmp_path, env)
    killed.append(server)
    async with httpx.AsyncClient(base_url=server.url, headers={"X-Webhook-Secret": SECRET}) as client:
        for job in ("crash-a", "crash-b"):
            for minute, status in enumerate(("pending", "generating")):
                payload = progress(status, job, f"2025-10-21T16:{minute:02d}:00Z")
                assert (await client.post("/api/webhooks/image-completion", json=payload)).status_code == 200
    await receiver.wait_until(lambda: len(receiver.arrivals) >= 4)  # both jobs' heads tried, and failing
    os.kill(server.process.pid, signal.SIGKILL)
    await asyncio.to_thread(server.process.wait, 10)
    assert receiver.accepted == []

    down[0] = False
    restarted = await asyncio.to_thread(LiveServer, tmp_path, env)
    killed.append(restarted)
    await receiver.wait_until(lambda: len(receiver.accepted) >= 4)
    await asyncio.sleep(0.3)
    ids = receiver.accepted_ids()
    assert len(ids) == len(set(ids)) == 4
    for job in ("crash-a", "crash-b"):
        assert in_job_order(receiver, job) == ["pending", "generating"]


async def test_sigterm_with_a_backlog_stops_promptly_and_a_restart_finishes_it(
    tmp_path: Path, receiver: Receiver, killed: list[LiveServer]
) -> None:
    """A graceful stop in the middle of a backlog: the gateway exits within seconds (deliveries in flight
    finish, the rest stay pending), and after a restart every event has arrived once."""
    receiver.delay = 0.8  # 32 deliveries in flight at once, and the rest waiting for a free slot
    env = {"WEBHOOK_SECRET": SECRET, "GATEWAY_FORWARD_URL": receiver.url, "GATEWAY_FORWARD_SIGNING_KEY": FORWARD_KEY}
    server = await asyncio.to_thread(LiveServer, tmp_path, env)
    killed.append(server)
    async with httpx.AsyncClient(base_url=server.url, headers={"X-Webhook-Secret": SECRET}) as client:
        for n in range(50):
            payload = progress("pending", f"backlog-{n}")
            assert (await client.post("/api/webhooks/image-completion", json=payload)).status_code == 200
    server.process.send_signal(signal.SIGTERM)
    started = asyncio.get_running_loop().time()
    await asyncio.to_thread(server.process.wait, 15)
    assert asyncio.get_running_loop().time() - started < 8
    assert len(receiver.accepted) < 50, "nothing was left to deliver after the restart: make the backlog longer"

    restarted = await asyncio.to_thread(LiveServer, tmp_path, env)
    killed.append(restarted)
    await receiver.wait_until(lambda: len(receiver.accepted) >= 50)
    await asyncio.sleep(0.2)
    ids = receiver.accepted_ids()
    assert len(ids) == len(set(ids)) == 50
    # Stopped while this loop runs: the receiver (on it) answers the deliveries still in flight. Left to the
    # fixture, the stop would wait out the dispatcher's grace period for answers that cannot come.
    await asyncio.to_thread(restarted.stop)
