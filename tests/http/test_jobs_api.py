"""The read API: one job with its history, listings with filters and cursor pagination, health."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.config import Settings
from tests.conftest import completed_image, failed, progress

IMAGE = "/api/webhooks/image-completion"


@pytest.fixture
def settings(family_settings: Settings) -> Settings:
    """Every test here runs on both store families: SQLite + memory, PostgreSQL + Redis."""
    return family_settings


async def test_unknown_job_is_404_naming_it(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/api/jobs/nope-123")
    assert response.status_code == 404
    assert "nope-123" in response.json()["detail"]


async def test_history_lists_every_distinct_event_in_order(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=progress("generating", job_id="j1", timestamp="2025-10-21T16:42:00Z"))
    await client.post(IMAGE, json=progress("generating", job_id="j1", timestamp="2025-10-21T16:42:00Z"))
    await client.post(IMAGE, json=completed_image(job_id="j1"))
    await client.post(IMAGE, json=progress("saving", job_id="j1", timestamp="2025-10-21T16:44:00Z"))
    job = (await client.get("/api/jobs/j1")).json()
    assert [(e["status"], e["outcome"], e["stale"]) for e in job["history"]] == [
        ("generating", "applied", False),
        ("completed", "applied", False),
        ("saving", "stale", True),
    ]
    assert job["history"][0]["timestamp"] == "2025-10-21T16:42:00Z"
    assert job["created_at"] <= job["updated_at"]


async def test_listing_pages_through_every_job_once_newest_first(client: AsyncTestClient[Any]) -> None:
    for number in range(23):
        await client.post(IMAGE, json=progress("pending", job_id=f"job-{number:02d}"))
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/jobs", params=params)).json()
        seen += [job["job_id"] for job in page["jobs"]]
        assert all("history" not in job for job in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"job-{number:02d}" for number in reversed(range(23))]


async def test_listing_filters_by_kind_and_status(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=completed_image(job_id="done"))
    await client.post(IMAGE, json=failed(job_id="broken"))
    await client.post("/api/webhooks/blog-completion", json=progress("generating", job_id="article"))
    failed_jobs = (await client.get("/api/jobs", params={"status": "failed"})).json()["jobs"]
    assert [job["job_id"] for job in failed_jobs] == ["broken"]
    blog_jobs = (await client.get("/api/jobs", params={"kind": "blog"})).json()["jobs"]
    assert [job["job_id"] for job in blog_jobs] == ["article"]
    both = (await client.get("/api/jobs", params={"kind": "image", "status": "completed"})).json()["jobs"]
    assert [job["job_id"] for job in both] == ["done"]


async def test_bad_listing_parameters_are_400(client: AsyncTestClient[Any]) -> None:
    for params in ({"kind": "video"}, {"status": "exploded"}, {"cursor": "abc"}, {"limit": 0}, {"limit": 501}):
        response = await client.get("/api/jobs", params=params)
        assert response.status_code == 400, params


async def test_health_and_readiness(client: AsyncTestClient[Any]) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "stores": {"jobs": "ok", "idempotency": "ok"}}
