"""``POST /api/jobs``: registering jobs, idempotent and conflicting registrations, and the strict mode."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.http.app import create_app
from gateway.stores import migrations
from gateway.stores.queries import JobQuery
from tests.backends import sqlite_job_store
from tests.conftest import SECRET, completed_image, progress

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"


def registration(job_id: str = "img-1", **changes: Any) -> dict[str, Any]:
    """What the app knows when a user asks for images: the seed's ImageGeneration fields."""
    return {
        "job_id": job_id,
        "kind": "image",
        "user_id": "user-42",
        "organization_id": "org-7",
        "prompt": "A lighthouse at dawn, watercolour",
        "num_images": 2,
        "size": "1024x1024",
        "format": "PNG",
        "style": "photorealistic",
        "quality": "high",
        "metadata": {"plan": "pro", "tags": ["sea", "dawn"]},
    } | changes


@pytest.fixture
def settings(family_settings: Settings) -> Settings:
    """Every test here runs on both store families: SQLite + memory, PostgreSQL + Redis."""
    return family_settings


@pytest.fixture
async def strict(settings: Settings) -> AsyncIterator[tuple[AsyncTestClient[Any], CollectorRegistry]]:
    """An app with GATEWAY_REQUIRE_REGISTERED_JOBS=true, and its metrics registry."""
    registry = CollectorRegistry()
    app = create_app(dataclasses.replace(settings, require_registered_jobs=True), registry=registry)
    async with AsyncTestClient(app=app) as test_client:
        test_client.headers["X-Webhook-Secret"] = SECRET
        yield test_client, registry


async def test_registered_job_is_pending_with_its_context(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/api/jobs", json=registration())
    assert response.status_code == 201
    job = response.json()
    assert (job["job_id"], job["kind"], job["status"]) == ("img-1", "image", "pending")
    assert (job["user_id"], job["organization_id"]) == ("user-42", "org-7")
    assert job["context"]["prompt"] == "A lighthouse at dawn, watercolour"
    assert job["context"]["metadata"] == {"plan": "pro", "tags": ["sea", "dawn"]}
    assert job["registered_at"] == job["created_at"]
    assert job["history"] == []
    assert (await client.get("/api/jobs/img-1")).json() == job


async def test_webhooks_then_move_a_registered_job_and_keep_its_context(client: AsyncTestClient[Any]) -> None:
    await client.post("/api/jobs", json=registration())
    assert (await client.post(IMAGE, json=progress("generating", job_id="img-1"))).json()["outcome"] == "applied"
    await client.post(IMAGE, json=completed_image(job_id="img-1"))
    job = (await client.get("/api/jobs/img-1")).json()
    assert job["status"] == "completed"
    assert job["user_id"] == "user-42"
    assert job["context"]["num_images"] == 2
    assert [entry["status"] for entry in job["history"]] == ["generating", "completed"]


async def test_same_registration_twice_is_200_and_changes_nothing(client: AsyncTestClient[Any]) -> None:
    first = await client.post("/api/jobs", json=registration())
    # Same content, keys in another order: still the same registration.
    again = await client.post("/api/jobs", json=dict(reversed(list(registration().items()))))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()


async def test_a_different_body_is_409_naming_the_fields_and_keeps_the_first(client: AsyncTestClient[Any]) -> None:
    await client.post("/api/jobs", json=registration())
    response = await client.post("/api/jobs", json=registration(user_id="user-43", num_images=4))
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "img-1" in detail
    assert "user_id" in detail
    assert "num_images" in detail
    assert "prompt" not in detail
    assert (await client.get("/api/jobs/img-1")).json()["user_id"] == "user-42"


async def test_registration_under_another_kind_is_409_naming_the_route(client: AsyncTestClient[Any]) -> None:
    await client.post("/api/jobs", json=registration())
    response = await client.post("/api/jobs", json=registration(kind="blog"))
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "Job 'img-1' is an image job: its webhooks go to /api/webhooks/image-completion; register it with kind 'image'"
    )


async def test_registration_after_its_webhooks_attaches_the_context(client: AsyncTestClient[Any]) -> None:
    """The backend was faster than the app: the job exists; registering attaches who asked for it."""
    await client.post(IMAGE, json=progress("generating", job_id="img-1"))
    response = await client.post("/api/jobs", json=registration())
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "generating"
    assert job["user_id"] == "user-42"
    assert job["registered_at"] >= job["created_at"]
    assert len(job["history"]) == 1
    again = await client.post("/api/jobs", json=registration())
    assert again.status_code == 200
    assert (await client.post("/api/jobs", json=registration(prompt="other"))).status_code == 409


async def test_registration_of_a_job_the_webhooks_made_another_kind_is_409(client: AsyncTestClient[Any]) -> None:
    await client.post(BLOG, json=progress("generating", job_id="art-1"))
    response = await client.post("/api/jobs", json=registration(job_id="art-1"))
    assert response.status_code == 409
    assert "/api/webhooks/blog-completion" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (registration(colour="blue"), "colour"),
        ({k: v for k, v in registration().items() if k != "user_id"}, "user_id"),
        (registration(num_images=0), "$.num_images"),
        (registration(size="huge"), "$.size"),
        (registration(kind="video"), "$.kind"),
        (registration(job_id="has spaces"), "$.job_id"),
        (registration(metadata=[1, 2]), "$.metadata"),
        (registration(user_id=""), "$.user_id"),
    ],
    ids=[
        "unknown-field",
        "missing-user",
        "zero-images",
        "bad-size",
        "unknown-kind",
        "bad-id",
        "metadata-list",
        "empty-user",
    ],
)
async def test_invalid_registration_is_400_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], names: str
) -> None:
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == 400
    assert names in response.json()["detail"]


async def test_malformed_registration_json_is_400(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "Malformed JSON" in response.json()["detail"]


def _requests(registry: CollectorRegistry, outcome: str) -> float:
    labels = {"kind": "image", "outcome": outcome, "sender": "default"}
    return registry.get_sample_value("gateway_webhook_requests_total", labels) or 0.0


async def test_strict_mode_refuses_an_unregistered_job_with_404(
    strict: tuple[AsyncTestClient[Any], CollectorRegistry],
) -> None:
    client, registry = strict
    response = await client.post(IMAGE, json=progress("generating", job_id="ghost-1"))
    assert response.status_code == 404
    assert "ghost-1" in response.json()["detail"]
    assert "POST /api/jobs" in response.json()["detail"]
    assert (await client.get("/api/jobs/ghost-1")).status_code == 404
    assert _requests(registry, "unregistered") == 1
    # Registered afterwards, the backend's retry of the same webhook goes through (its claim was released).
    await client.post("/api/jobs", json=registration(job_id="ghost-1"))
    retried = await client.post(IMAGE, json=progress("generating", job_id="ghost-1"))
    assert retried.json()["outcome"] == "applied"
    assert _requests(registry, "applied") == 1


async def test_strict_mode_refuses_a_job_known_only_from_webhooks(
    client: AsyncTestClient[Any], strict: tuple[AsyncTestClient[Any], CollectorRegistry]
) -> None:
    """A job created in lenient mode and never registered stays unregistered when strict mode is turned on."""
    await client.post(IMAGE, json=progress("generating", job_id="legacy-1"))
    strict_client, registry = strict
    response = await strict_client.post(IMAGE, json=completed_image(job_id="legacy-1"))
    assert response.status_code == 404
    assert _requests(registry, "unregistered") == 1


@pytest.mark.parametrize("mode", ["lenient", "strict"])
async def test_a_job_of_another_kind_is_409_naming_its_route_in_both_modes(
    client: AsyncTestClient[Any], strict: tuple[AsyncTestClient[Any], CollectorRegistry], mode: str
) -> None:
    await client.post("/api/jobs", json=registration(job_id="img-9"))
    sender = client if mode == "lenient" else strict[0]
    response = await sender.post(BLOG, json=progress("generating", job_id="img-9"))
    assert response.status_code == 409
    assert "/api/webhooks/image-completion" in response.json()["detail"]


async def test_lenient_mode_still_creates_jobs_from_their_first_webhook(client: AsyncTestClient[Any]) -> None:
    response = await client.post(IMAGE, json=progress("generating", job_id="walk-in"))
    assert response.json()["outcome"] == "applied"
    job = (await client.get("/api/jobs/walk-in")).json()
    assert (job["user_id"], job["registered_at"], job["context"]) == (None, None, None)


async def test_a_database_from_before_registration_is_upgraded_in_place(tmp_path: Path) -> None:
    """Migration 0002 only adds columns and indexes: jobs recorded before it stay, unregistered."""
    path = str(tmp_path / "old.db")
    first = migrations.load("sqlite")[0]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT)")
        for statement in migrations.statements(first.sql):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (1, ?, '2025-10-21T00:00:00+00:00')", (first.name,))
        db.execute(
            "INSERT INTO jobs (job_id, kind, status, created_at, updated_at) VALUES ('old-1', 'image', 'generating',"
            " '2025-10-21T16:40:00.000000+00:00', '2025-10-21T16:40:00.000000+00:00')"
        )
    jobs = sqlite_job_store(path)
    await jobs.open()
    try:
        job = await jobs.get("old-1")
        page = await jobs.list_jobs(JobQuery(user_id="user-42"))
    finally:
        await jobs.close()
    assert job is not None
    assert (job.status, job.user_id, job.registered_at) == ("generating", None, None)
    assert page.jobs == []
