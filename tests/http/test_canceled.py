"""The ``canceled`` status end to end: a user's or a provider's cancellation ends a job without being a
failed generation. Through the real HTTP stack on both store families: the job's state and history, the
stats and the metrics; the live stream; forwarding over HTTP and to NATS JetStream; retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import nats
import nats.js.errors
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.model import JobEvent, Status
from gateway.stores.postgres import PostgresJobStore
from gateway.stores.sqlite import SqliteJobStore
from tests.conftest import JOB_ID, SECRET, LiveServer, completed_image, failed, progress
from tests.delivery.test_jetstream import stored
from tests.http.test_live_events import messages
from tests.receiver import FORWARD_KEY, Receiver

if TYPE_CHECKING:
    from playwright.sync_api import Browser

IMAGE = "/api/webhooks/image-completion"
REASON = "Canceled by the user"
FAST = (0.05, 0.05, 0.05)


def canceled(
    job_id: str = JOB_ID, timestamp: str = "2025-10-21T16:45:00Z", reason: str | None = REASON
) -> dict[str, Any]:
    payload: dict[str, Any] = {"job_id": job_id, "status": "canceled", "timestamp": timestamp}
    if reason is not None:
        payload["error_message"] = reason
    return payload


def finished_jobs(exposition: str) -> dict[str, float]:
    """``gateway_jobs_finished_total`` by its ``result`` label, summed over kinds and models."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name == "gateway_jobs_finished":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    result = sample.labels["result"]
                    totals[result] = totals.get(result, 0.0) + sample.value
    return totals


@pytest.fixture
def settings(family_settings: Settings) -> Settings:
    """The HTTP tests run on both store families: SQLite + memory, PostgreSQL + Redis."""
    return family_settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings, registry=CollectorRegistry())) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        yield client


async def test_a_cancellation_ends_the_job_with_its_reason(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=progress("generating"))
    response = await client.post(IMAGE, json=canceled())
    assert response.status_code == 200
    assert response.json() == {"received": True, "job_id": JOB_ID, "status": "canceled", "outcome": "applied"}

    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["status"] == "canceled"
    assert job["error_message"] == REASON
    assert job["completed_at"] is not None
    assert job["result"] is None
    assert [(entry["status"], entry["stale"]) for entry in job["history"]] == [
        ("generating", False),
        ("canceled", False),
    ]
    assert job["history"][-1]["error_message"] == REASON
    listed = (await client.get("/api/jobs", params={"status": "canceled"})).json()["jobs"]
    assert [summary["job_id"] for summary in listed] == [JOB_ID]
    assert (await client.get("/api/jobs", params={"status": "failed"})).json()["jobs"] == []


async def test_a_cancellation_needs_no_reason(client: AsyncTestClient[Any]) -> None:
    response = await client.post(IMAGE, json=canceled(reason=None))
    assert response.json()["outcome"] == "applied"
    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["status"] == "canceled"
    assert job["error_message"] is None


@pytest.mark.parametrize(
    ("reason", "detail"),
    [
        ("", "Expected `str` of length >= 1 - at `$.error_message`"),
        ("x" * 10_001, "Expected `str` of length <= 10000 - at `$.error_message`"),
        ("stopped\x00here", "NUL character (\\u0000) - at `$.error_message`"),
    ],
)
async def test_a_reason_that_is_not_usable_text_is_a_400_naming_it(
    client: AsyncTestClient[Any], reason: str, detail: str
) -> None:
    response = await client.post(IMAGE, json=canceled(reason=reason))
    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert (await client.get(f"/api/jobs/{JOB_ID}")).status_code == 404


@pytest.mark.parametrize("late", ["completed", "failed", "saving"])
async def test_nothing_follows_a_cancellation(
    client: AsyncTestClient[Any], caplog: pytest.LogCaptureFixture, late: str
) -> None:
    """A result racing the cancellation is recorded as stale, without the warning a completed/failed
    contradiction gets: it is an ordinary race, not a backend bug."""
    await client.post(IMAGE, json=canceled())
    later = "2025-10-21T16:46:00Z"
    payload = {
        "completed": completed_image(timestamp=later),
        "failed": failed(timestamp=later),
        "saving": progress("saving", timestamp=later),
    }[late]
    with caplog.at_level(logging.WARNING):
        response = await client.post(IMAGE, json=payload)
    assert response.json() == {"received": True, "job_id": JOB_ID, "status": "canceled", "outcome": "stale"}
    assert not [record for record in caplog.records if "after terminal" in record.getMessage()]
    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["status"] == "canceled"
    assert job["result"] is None
    assert job["error_message"] == REASON
    assert [(entry["status"], entry["stale"]) for entry in job["history"]] == [("canceled", False), (late, True)]


@pytest.mark.parametrize("first", ["completed", "failed"])
async def test_a_cancellation_after_the_job_finished_is_stale(client: AsyncTestClient[Any], first: str) -> None:
    await client.post(IMAGE, json=completed_image() if first == "completed" else failed())
    response = await client.post(IMAGE, json=canceled(timestamp="2025-10-21T16:46:00Z"))
    assert response.json()["outcome"] == "stale"
    assert response.json()["status"] == first
    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["status"] == first
    assert job["history"][-1]["status"] == "canceled"
    assert job["history"][-1]["stale"] is True


async def test_stats_and_metrics_count_cancellations_apart_from_failures(client: AsyncTestClient[Any]) -> None:
    """Two canceled, one completed, one failed: the failure ratio is 1/2, not 1/4; the finished-jobs
    counter says ``result="canceled"``."""
    await client.post(IMAGE, json=completed_image(job_id="done"))
    await client.post(IMAGE, json=failed(job_id="broken"))
    await client.post(IMAGE, json=progress("generating", job_id="stopped-1"))
    await client.post(IMAGE, json=canceled(job_id="stopped-1"))
    await client.post(IMAGE, json=canceled(job_id="stopped-2", reason=None))

    stats = (await client.get("/api/jobs/stats")).json()
    assert (stats["completed"], stats["failed"], stats["canceled"]) == (1, 1, 2)
    assert stats["failure_ratio"] == 0.5
    assert stats["created"]["canceled"] == 2

    exposition = (await client.get("/metrics")).text
    assert finished_jobs(exposition) == {"completed": 1.0, "failed": 1.0, "canceled": 2.0}
    assert 'gateway_job_transitions_total{kind="image",status="canceled"} 2.0' in exposition
    assert 'gateway_jobs_in_progress{kind="image",status="canceled"}' not in exposition


async def test_only_cancellations_give_no_failure_ratio(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=canceled(job_id="only"))
    stats = (await client.get("/api/jobs/stats")).json()
    assert (stats["completed"], stats["failed"], stats["canceled"]) == (0, 0, 1)
    assert stats["failure_ratio"] is None


# ---- the live stream ------------------------------------------------------------------------------


def test_a_job_stream_ends_with_its_cancellation(tmp_path: Path, stopping: list[LiveServer]) -> None:
    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET})
    stopping.append(server)
    headers = {"X-Webhook-Secret": SECRET}
    posted = httpx.post(f"{server.url}{IMAGE}", json=progress("generating", job_id="live-c"), headers=headers)
    assert posted.status_code == 200
    with httpx.stream("GET", f"{server.url}/api/jobs/live-c/events", timeout=10) as response:
        assert response.status_code == 200
        stream = messages(response.iter_lines())
        assert next(m for m in stream if "id" in m).payload["status"] == "generating"
        posted = httpx.post(f"{server.url}{IMAGE}", json=canceled(job_id="live-c"), headers=headers)
        assert posted.json()["outcome"] == "applied"
        last = next(m for m in stream if "id" in m)
        assert (last.payload["status"], last.payload["outcome"]) == ("canceled", "applied")
        assert next(stream)["event"] == "end"
    again = httpx.get(f"{server.url}/api/jobs/live-c/events", headers={"Last-Event-ID": last["id"]}, timeout=5)
    assert again.status_code == 204


# ---- forwarding -----------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


def forwarding(settings: Settings, receiver: Receiver, **changes: Any) -> Settings:
    import base64

    key = base64.b64decode(FORWARD_KEY.removeprefix("whsec_"))
    defaults = {"forward_url": receiver.url, "forward_signing_key": key, "forward_retry_schedule": FAST}
    return replace(settings, **{**defaults, **changes})


async def test_a_cancellation_is_forwarded_with_its_reason(settings: Settings, receiver: Receiver) -> None:
    """With GATEWAY_FORWARD_STATUSES=canceled only the cancellation reaches the app, and a result after it
    (stale) is never forwarded."""
    app = create_app(forwarding(settings, receiver, forward_statuses=frozenset({"canceled"})))
    async with AsyncTestClient(app=app) as client:
        client.headers["X-Webhook-Secret"] = SECRET
        for payload in (progress("generating", job_id="fwd"), canceled(job_id="fwd")):
            assert (await client.post(IMAGE, json=payload)).json()["outcome"] == "applied"
        late = completed_image(job_id="fwd", timestamp="2025-10-21T16:46:00Z")
        assert (await client.post(IMAGE, json=late)).json()["outcome"] == "stale"
        await receiver.wait_until(lambda: len(receiver.accepted) >= 1)
        await asyncio.sleep(0.2)  # anything else forwarded would arrive meanwhile
    [arrival] = receiver.accepted
    assert arrival.event["job_id"] == "fwd"
    assert arrival.event["status"] == "canceled"
    assert arrival.event["error_message"] == REASON
    assert arrival.event.get("result") is None
    assert receiver.unverified == 0


async def test_a_cancellation_is_published_under_its_own_nats_subject(nats_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:12]
    prefix, stream = f"test_{tag}.jobs", f"TEST_{tag}"
    settings = Settings(
        webhook_secret=SECRET,
        database=SqliteDatabase(str(tmp_path / "nats.db")),
        nats_url=nats_url,
        nats_subject_prefix=prefix,
        nats_stream=stream,
    )
    try:
        async with AsyncTestClient(app=create_app(settings)) as client:
            client.headers["X-Webhook-Secret"] = SECRET
            assert (await client.post(IMAGE, json=canceled(job_id="nats-c"))).json()["outcome"] == "applied"
            deadline = asyncio.get_running_loop().time() + 15
            while (await client.get("/api/deliveries", params={"state": "pending"})).json()["deliveries"]:
                assert asyncio.get_running_loop().time() < deadline, "delivery still pending"
                await asyncio.sleep(0.05)
        [message] = await stored(nats_url, stream, prefix)
        assert message.subject == f"{prefix}.image.canceled"
        event = msgspec.json.decode(message.data)
        assert (event["job_id"], event["status"], event["error_message"]) == ("nats-c", "canceled", REASON)
    finally:
        connection = await nats.connect(nats_url, connect_timeout=1, allow_reconnect=False)
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await connection.jetstream(timeout=2).delete_stream(stream)
        finally:
            await connection.close()


# ---- retention ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_retention_prunes_old_canceled_jobs(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    store: SqliteJobStore | PostgresJobStore
    if backend == "sqlite":
        store = SqliteJobStore(str(tmp_path / "jobs.db"))
    else:
        store = PostgresJobStore(request.getfixturevalue("database_url"))
    await store.open()
    try:
        old = datetime.now(UTC) - timedelta(days=40)
        for job_id, status in (("old-canceled", Status.CANCELED), ("old-running", Status.GENERATING)):
            await store.apply(JobEvent(kind="image", job_id=job_id, status=status, timestamp=old, received_at=old))
        assert await store.prune_finished(old + timedelta(days=1), 100) == 1
        assert await store.get("old-canceled") is None
        assert await store.get("old-running") is not None
    finally:
        await store.close()


# ---- the status page --------------------------------------------------------------------------------


def test_the_status_page_shows_a_cancellation_as_its_own_state(
    browser: Browser, tmp_path: Path, stopping: list[LiveServer]
) -> None:
    """A job canceled while the page is open turns ``canceled`` at once: its own badge (neither the
    completed nor the failed colours), its reason shown but not as an error, its own count, and no part
    in the failure ratio. A result arriving after it (stale) changes nothing."""
    from playwright.sync_api import expect

    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET})
    stopping.append(server)
    headers = {"X-Webhook-Secret": SECRET}

    def post(payload: dict[str, Any]) -> None:
        assert httpx.post(f"{server.url}{IMAGE}", json=payload, headers=headers).status_code == 200

    post(completed_image(job_id="page-done"))
    post(failed(job_id="page-broken"))
    post(progress("generating", job_id="page-stopped"))
    context = browser.new_context(viewport={"width": 1200, "height": 780})
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"{server.url}/")
        expect(page.locator("#connection")).to_have_text("Live")
        row = page.locator("#job-rows tr", has_text="page-stopped")
        expect(row.locator(".badge")).to_have_text("generating")

        post(canceled(job_id="page-stopped"))
        expect(row.locator(".badge")).to_have_text("canceled")
        expect(row).to_have_attribute("data-status", "canceled")
        expect(row.locator(".badge")).to_have_class("badge status-canceled")
        expect(row.locator(".job-reason")).to_have_text(REASON)
        expect(row.locator(".job-error")).to_have_count(0)
        expect(row.locator(".elapsed")).not_to_contain_text("running")
        expect(page.locator("#stat-canceled")).to_have_text("1")
        expect(page.locator("#stat-completed")).to_have_text("1")
        expect(page.locator("#stat-failed")).to_have_text("1")
        expect(page.locator("#stat-ratio")).to_have_text("50.0 %")  # 1 failed of 2, the canceled job aside

        colours = page.evaluate(
            """() => [...document.querySelectorAll("#job-rows .badge")].map((badge) => {
                 const style = getComputedStyle(badge);
                 return [badge.textContent, style.color, style.backgroundColor];
               })"""
        )
        looks = {status: (colour, background) for status, colour, background in colours}
        assert looks["canceled"] != looks["failed"]
        assert looks["canceled"] != looks["completed"]

        post(completed_image(job_id="page-stopped", timestamp="2025-10-21T16:46:00Z"))  # stale
        post(progress("pending", job_id="page-after"))
        # Events arrive in order: once the next job shows, the stale event was seen, and ignored.
        expect(page.locator("#job-rows tr", has_text="page-after")).to_be_visible()
        expect(row.locator(".badge")).to_have_text("canceled")
        expect(page.locator("#stat-completed")).to_have_text("1")
        assert problems == []
    finally:
        context.close()
