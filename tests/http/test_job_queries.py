"""``GET /api/jobs`` over hundreds of registered jobs: every filter, cursor pagination, a stable order; stats."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.config import Settings
from tests.conftest import completed_image, failed, progress

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"
JOBS = 300


@pytest.fixture
def settings(family_settings: Settings) -> Settings:
    """Every test here runs on both store families: SQLite + memory, PostgreSQL + Redis."""
    return family_settings


async def _register_many(client: AsyncTestClient[Any]) -> list[dict[str, Any]]:
    """300 jobs: 3 users in 2 organisations, two kinds, a third of them completed and a tenth failed."""
    jobs = []
    for number in range(JOBS):
        body = {
            "job_id": f"job-{number:03d}",
            "kind": "blog" if number % 5 == 0 else "image",
            "user_id": f"user-{number % 3}",
            "organization_id": f"org-{number % 2}",
            "prompt": f"prompt {number}",
        }
        response = await client.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        jobs.append(response.json())
    webhooks = []
    for job in jobs:
        number = int(job["job_id"].removeprefix("job-"))
        route = BLOG if job["kind"] == "blog" else IMAGE
        if number % 10 == 1:
            webhooks.append(client.post(route, json=failed(job_id=job["job_id"])))
        elif number % 3 == 0 and job["kind"] == "image":
            webhooks.append(client.post(route, json=completed_image(job_id=job["job_id"])))
        elif number % 3 == 1:
            webhooks.append(client.post(route, json=progress("generating", job_id=job["job_id"])))
    for response in await asyncio.gather(*webhooks):
        assert response.status_code == 200
    return jobs


async def _all_pages(client: AsyncTestClient[Any], limit: int, **filters: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": limit, **filters} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/api/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["jobs"]) <= limit
        seen += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_filters_and_pagination_over_hundreds_of_jobs(client: AsyncTestClient[Any]) -> None:
    registered = await _register_many(client)
    newest_first = [job["job_id"] for job in reversed(registered)]

    everything = await _all_pages(client, limit=37)
    assert [job["job_id"] for job in everything] == newest_first  # each once, in a stable order

    def expected(keep: Any) -> list[str]:
        return [job["job_id"] for job in everything if keep(job)]

    cases: list[tuple[dict[str, Any], Any]] = [
        ({"user_id": "user-1"}, lambda job: job["user_id"] == "user-1"),
        ({"organization_id": "org-0"}, lambda job: job["organization_id"] == "org-0"),
        ({"kind": "blog"}, lambda job: job["kind"] == "blog"),
        ({"status": "failed"}, lambda job: job["status"] == "failed"),
        (
            {"user_id": "user-1", "organization_id": "org-1", "status": "generating"},
            lambda job: (job["user_id"], job["organization_id"], job["status"]) == ("user-1", "org-1", "generating"),
        ),
    ]
    for filters, keep in cases:
        want = expected(keep)
        assert want, filters  # the data set exercises every filter
        assert [job["job_id"] for job in await _all_pages(client, limit=25, **filters)] == want, filters

    statuses = {job["status"] for job in everything}
    assert statuses == {"pending", "generating", "completed", "failed"}


async def test_time_range_selects_jobs_by_creation(client: AsyncTestClient[Any]) -> None:
    for number in range(5):
        await client.post("/api/jobs", json={"job_id": f"early-{number}", "kind": "image", "user_id": "u"})
    await asyncio.sleep(0.05)
    boundary = datetime.now(UTC)
    await asyncio.sleep(0.05)
    for number in range(4):
        await client.post("/api/jobs", json={"job_id": f"late-{number}", "kind": "image", "user_id": "u"})

    after = await _all_pages(client, limit=3, created_after=boundary.isoformat())
    assert [job["job_id"] for job in after] == [f"late-{n}" for n in reversed(range(4))]
    before = await _all_pages(client, limit=3, created_before=boundary.isoformat())
    assert [job["job_id"] for job in before] == [f"early-{n}" for n in reversed(range(5))]
    # A time without a zone is UTC, as in webhooks.
    naive = boundary.replace(tzinfo=None).isoformat()
    assert len(await _all_pages(client, limit=50, created_after=naive)) == 4
    window = {
        "created_after": (boundary - timedelta(hours=1)).isoformat(),
        "created_before": (boundary + timedelta(hours=1)).isoformat(),
    }
    assert len(await _all_pages(client, limit=50, **window)) == 9


async def test_bad_filters_are_400(client: AsyncTestClient[Any]) -> None:
    for params in (
        {"created_after": "yesterday"},
        {"created_before": "2025-13-01T00:00:00Z"},
        {"created_before": "0.5"},  # not read as a Unix time: only RFC 3339 is documented
    ):
        response = await client.get("/api/jobs", params=params)
        assert response.status_code == 400, params
        assert next(iter(params)) in response.json()["detail"]


async def test_stats_count_by_status_and_failure_ratio(client: AsyncTestClient[Any]) -> None:
    empty = (await client.get("/api/jobs/stats")).json()
    assert empty["failure_ratio"] is None
    assert set(empty["created"]) == {
        "pending",
        "initializing",
        "generating",
        "saving",
        "completed",
        "failed",
        "canceled",
    }

    for number in range(3):
        await client.post(IMAGE, json=completed_image(job_id=f"ok-{number}"))
    await client.post(IMAGE, json=failed(job_id="bad-1"))
    await client.post(IMAGE, json=progress("generating", job_id="busy-1"))
    await client.post(IMAGE, json=progress("canceled", job_id="stopped-1"))
    await client.post("/api/jobs", json={"job_id": "queued-1", "kind": "image", "user_id": "u"})

    stats = (await client.get("/api/jobs/stats")).json()
    assert stats["created"] == {
        "pending": 1,
        "initializing": 0,
        "generating": 1,
        "saving": 0,
        "completed": 3,
        "failed": 1,
        "canceled": 1,
    }
    assert (stats["completed"], stats["failed"], stats["canceled"]) == (3, 1, 1)
    assert stats["failure_ratio"] == pytest.approx(0.25)  # the canceled job is on neither side
    since = datetime.fromisoformat(stats["since"])
    until = datetime.fromisoformat(stats["until"])
    assert until - since == timedelta(hours=1)

    assert (await client.get("/api/jobs/stats", params={"window_seconds": 60})).json()["completed"] == 3
    assert (await client.get("/api/jobs/stats", params={"window_seconds": 10})).status_code == 400
