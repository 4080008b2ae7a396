"""Webhook behaviour through the in-process app: validation, idempotency, state machine, limits."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import msgspec
import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient, TestClient

from gateway.config import Settings
from gateway.http.app import create_app
from tests.conftest import JOB_ID, completed_blog, completed_image, failed, progress

IMAGE = "/api/webhooks/image-completion"
BLOG = "/api/webhooks/blog-completion"


@pytest.fixture
def settings(family_settings: Settings) -> Settings:
    """Every test here runs on both store families: SQLite + memory, PostgreSQL + Redis."""
    return family_settings


async def test_completed_image_is_applied_and_readable(client: AsyncTestClient[Any]) -> None:
    response = await client.post(IMAGE, json=completed_image())
    assert response.status_code == 200
    assert response.json() == {"received": True, "job_id": JOB_ID, "status": "completed", "outcome": "applied"}

    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["kind"] == "image"
    assert job["status"] == "completed"
    assert job["result"]["images"][0]["dimensions"] == "1024x1024"
    assert job["metadata"] == {"model_name": "gemini-2.0-flash-exp", "generation_time_seconds": 12.5}
    assert job["completed_at"] is not None


async def test_blog_completed_is_applied(client: AsyncTestClient[Any]) -> None:
    response = await client.post(BLOG, json=completed_blog())
    assert response.status_code == 200
    job = (await client.get("/api/jobs/blog-1")).json()
    assert job["result"] == {
        "article": {"title": "Ten ways to test a webhook", "url": "https://example.test/a", "word_count": 1200}
    }


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"job_id": JOB_ID, "status": "completed", "timestamp": "2025-10-21T16:45:00Z"}, "data"),
        ({"job_id": JOB_ID, "status": "failed", "timestamp": "2025-10-21T16:45:00Z"}, "error_message"),
        ({"job_id": JOB_ID, "status": "exploded", "timestamp": "2025-10-21T16:45:00Z"}, "$.status"),
        ({"status": "generating", "timestamp": "2025-10-21T16:45:00Z"}, "job_id"),
        ({"job_id": JOB_ID, "status": "generating"}, "timestamp"),
        ({"job_id": JOB_ID, "status": "generating", "timestamp": "yesterday"}, "$.timestamp"),
        (completed_image() | {"data": {"images": []}}, "$.data.images"),
        (
            completed_image() | {"data": {"images": [{"url": "u", "size_bytes": -1}]}},
            "$.data.images[0].size_bytes",
        ),
        (
            completed_image() | {"data": {"images": [{"url": "u", "dimensions": "big"}]}},
            "$.data.images[0].dimensions",
        ),
        (
            completed_image() | {"data": {"images": [{"url": "u"}], "metadata": {"generation_time_seconds": -2}}},
            "$.data.metadata.generation_time_seconds",
        ),
        ({"job_id": "has spaces", "status": "pending", "timestamp": "2025-10-21T16:45:00Z"}, "$.job_id"),
        ([1, 2, 3], "object"),
    ],
)
async def test_schema_violations_are_400_naming_the_field(
    client: AsyncTestClient[Any], payload: Any, path: str
) -> None:
    response = await client.post(IMAGE, json=payload)
    assert response.status_code == 400
    assert path in response.json()["detail"]
    assert (await client.get(f"/api/jobs/{JOB_ID}")).status_code == 404


async def test_malformed_json_is_400(client: AsyncTestClient[Any]) -> None:
    response = await client.post(IMAGE, content=b'{"job_id": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Malformed JSON")


@pytest.mark.parametrize(
    ("route", "content", "detail"),
    [
        (IMAGE, b"", "Malformed JSON: the body is empty (expected a JSON object)"),
        (IMAGE, b" \r\n", "Malformed JSON: the body is empty (expected a JSON object)"),
        (
            IMAGE,
            b'{"job_id": "j-1", "status": "exploded", "timestamp": "2025-10-21T16:45:00Z"}',
            "Invalid payload: Invalid value - at `$.status`: "
            "expected one of pending, initializing, generating, saving, completed, failed, canceled",
        ),
        (
            IMAGE,
            msgspec.json.encode(completed_blog()),
            "Invalid payload: Object missing required field `images` - at `$.data`; "
            "this looks like a blog job: post it to /api/webhooks/blog-completion",
        ),
        (
            BLOG,
            msgspec.json.encode(completed_image()),
            "Invalid payload: Object missing required field `article` - at `$.data`; "
            "this looks like an image job: post it to /api/webhooks/image-completion",
        ),
    ],
)
async def test_a_400_says_how_to_fix_the_request(
    client: AsyncTestClient[Any], route: str, content: bytes, detail: str
) -> None:
    """An empty body, an unknown status and another kind's payload each get a detail that says what to do."""
    response = await client.post(route, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"] == detail


async def test_an_invalid_payload_of_no_kind_gets_no_route_hint(client: AsyncTestClient[Any]) -> None:
    payload = completed_image() | {"data": {"images": [{"url": "u", "size_bytes": -1}]}}
    response = await client.post(IMAGE, json=payload)
    assert response.status_code == 400
    assert response.json()["detail"] == "Invalid payload: Expected `int` >= 0 - at `$.data.images[0].size_bytes`"


async def test_unknown_fields_are_ignored(client: AsyncTestClient[Any]) -> None:
    payload = completed_image(progress_percent=100)
    payload["data"]["images"][0]["seed"] = 42
    response = await client.post(IMAGE, json=payload)
    assert response.status_code == 200
    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert "seed" not in job["result"]["images"][0]


async def test_blog_blank_title_is_400(client: AsyncTestClient[Any]) -> None:
    payload = completed_blog()
    payload["data"]["article"]["title"] = ""
    response = await client.post(BLOG, json=payload)
    assert response.status_code == 400
    assert "$.data.article.title" in response.json()["detail"]


async def test_non_json_content_type_is_415(client: AsyncTestClient[Any]) -> None:
    response = await client.post(IMAGE, content=b"job_id=1", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


async def test_json_with_charset_is_accepted(client: AsyncTestClient[Any]) -> None:
    import msgspec

    response = await client.post(
        IMAGE,
        content=msgspec.json.encode(completed_image()),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


async def test_announced_oversized_body_is_413_before_reading(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        IMAGE, content=b"{}", headers={"Content-Type": "application/json", "Content-Length": str(2 * 1024 * 1024)}
    )
    assert response.status_code == 413


async def test_job_of_another_kind_is_409_naming_its_route(client: AsyncTestClient[Any]) -> None:
    assert (await client.post(IMAGE, json=progress("generating"))).status_code == 200
    response = await client.post(BLOG, json=completed_blog(job_id=JOB_ID))
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"Job {JOB_ID!r} is an image job: post its webhooks to /api/webhooks/image-completion"
    )
    assert (await client.get(f"/api/jobs/{JOB_ID}")).json()["status"] == "generating"


async def test_same_event_is_a_duplicate(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=progress("generating"))
    response = await client.post(IMAGE, json=progress("generating"))
    assert response.json() == {"received": True, "job_id": JOB_ID, "status": "generating", "outcome": "duplicate"}
    assert len((await client.get(f"/api/jobs/{JOB_ID}")).json()["history"]) == 1


async def test_same_webhook_id_is_a_duplicate_even_with_another_body(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=progress("generating"), headers={"webhook-id": "msg_1"})
    response = await client.post(
        IMAGE, json=progress("saving", timestamp="2025-10-21T16:44:30Z"), headers={"webhook-id": "msg_1"}
    )
    assert response.json()["outcome"] == "duplicate"
    assert response.json()["status"] == "generating"


async def test_retry_with_new_webhook_id_is_a_duplicate(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=completed_image(), headers={"webhook-id": "msg_1"})
    response = await client.post(IMAGE, json=completed_image(), headers={"webhook-id": "msg_2"})
    assert response.json()["outcome"] == "duplicate"


async def test_same_instant_in_another_zone_is_the_same_event(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=completed_image(timestamp="2025-10-21T16:45:00Z"))
    response = await client.post(IMAGE, json=completed_image(timestamp="2025-10-21T18:45:00+02:00"))
    assert response.json()["outcome"] == "duplicate"


async def test_fifty_concurrent_copies_apply_once(client: AsyncTestClient[Any]) -> None:
    responses = await asyncio.gather(*(client.post(IMAGE, json=completed_image()) for _ in range(50)))
    outcomes = [response.json()["outcome"] for response in responses]
    assert all(response.status_code == 200 for response in responses)
    assert outcomes.count("applied") == 1
    assert outcomes.count("duplicate") == 49
    assert len((await client.get(f"/api/jobs/{JOB_ID}")).json()["history"]) == 1


async def test_lifecycle_moves_forward_and_records_progress(client: AsyncTestClient[Any]) -> None:
    steps = [
        ("pending", "2025-10-21T16:40:00Z"),
        ("initializing", "2025-10-21T16:41:00Z"),
        ("generating", "2025-10-21T16:42:00Z"),
        ("generating", "2025-10-21T16:43:00Z"),
        ("saving", "2025-10-21T16:44:00Z"),
    ]
    for status, timestamp in steps:
        response = await client.post(IMAGE, json=progress(status, timestamp=timestamp))
        assert response.json()["outcome"] == "applied"
        assert response.json()["status"] == status
    response = await client.post(IMAGE, json=completed_image())
    assert response.json()["status"] == "completed"
    history = (await client.get(f"/api/jobs/{JOB_ID}")).json()["history"]
    assert [entry["status"] for entry in history] == [s for s, _ in steps] + ["completed"]
    assert [entry["id"] for entry in history] == sorted(entry["id"] for entry in history)


async def test_late_progress_is_stale_and_kept_in_history(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=completed_image())
    response = await client.post(IMAGE, json=progress("generating"))
    assert response.json() == {"received": True, "job_id": JOB_ID, "status": "completed", "outcome": "stale"}
    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["status"] == "completed"
    assert [(entry["status"], entry["stale"]) for entry in job["history"]] == [
        ("completed", False),
        ("generating", True),
    ]


async def test_failed_after_completed_is_stale_and_logged(
    client: AsyncTestClient[Any], caplog: pytest.LogCaptureFixture
) -> None:
    await client.post(IMAGE, json=completed_image())
    with caplog.at_level("WARNING"):
        response = await client.post(IMAGE, json=failed(timestamp="2025-10-21T16:46:00Z"))
    assert response.json()["outcome"] == "stale"
    assert response.json()["status"] == "completed"
    assert any("after terminal" in record.getMessage() for record in caplog.records)
    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["error_message"] is None
    assert job["history"][-1]["error_message"] == "Clé API Google invalide"


async def test_failure_keeps_metadata_from_earlier_events(client: AsyncTestClient[Any]) -> None:
    early = progress("generating") | {"data": {"metadata": {"model_name": "flux-dev"}}}
    await client.post(IMAGE, json=early)
    await client.post(IMAGE, json=failed())
    job = (await client.get(f"/api/jobs/{JOB_ID}")).json()
    assert job["status"] == "failed"
    assert job["metadata"] == {"model_name": "flux-dev"}
    assert job["error_message"] == "Clé API Google invalide"


async def test_naive_timestamp_is_read_as_utc(client: AsyncTestClient[Any]) -> None:
    await client.post(IMAGE, json=progress("generating", timestamp="2025-10-21T16:44:00"))
    response = await client.post(IMAGE, json=progress("generating", timestamp="2025-10-21T16:44:00Z"))
    assert response.json()["outcome"] == "duplicate"


async def test_overlong_webhook_id_is_400(client: AsyncTestClient[Any]) -> None:
    response = await client.post(IMAGE, json=completed_image(), headers={"webhook-id": "x" * 300})
    assert response.status_code == 400
    assert "webhook-id" in response.json()["detail"]


async def test_unknown_webhook_path_is_404_naming_the_routes(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/api/webhooks/video-completion", json=completed_image())
    assert response.status_code == 404
    assert "/api/webhooks/image-completion" in response.json()["detail"]
    assert "/api/webhooks/blog-completion" in response.json()["detail"]
    metrics = (await client.get("/metrics")).text
    assert 'gateway_webhook_requests_total{kind="unknown",outcome="invalid",sender="unknown"} 1.0' in metrics
    assert (await client.post(IMAGE, json=completed_image())).status_code == 200


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE"])
async def test_other_methods_on_a_webhook_route_are_405_naming_post(client: AsyncTestClient[Any], method: str) -> None:
    """A sender that GETs the route (a misconfigured client, a health probe) learns what it takes, and
    nothing reaches the pipeline: no request is counted."""
    response = await client.request(method, IMAGE)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST, OPTIONS"
    if method != "HEAD":
        assert response.json() == {"status_code": 405, "detail": "Method Not Allowed"}
    metrics = (await client.get("/metrics")).text
    assert not re.search(r"^gateway_webhook_requests_total\{[^}]*\} [1-9]", metrics, re.MULTILINE)


async def test_options_on_a_webhook_route_lists_its_methods(client: AsyncTestClient[Any]) -> None:
    response = await client.options(BLOG)
    assert response.status_code == 204
    assert response.headers["allow"] == "OPTIONS, POST"
    assert response.content == b""


def test_a_websocket_to_a_webhook_route_is_refused_as_on_any_route(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Closed with 'Bad Request' as Litestar closes one on its own routes, and no error is logged (an
    anonymous client must not be able to fill the error log)."""
    with caplog.at_level(logging.ERROR), TestClient(app=create_app(settings)) as client:
        for path in (IMAGE, "/api/jobs"):
            with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(path):
                pass
            assert closed.value.detail == "Bad Request", path
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_webhook_posted_with_a_trailing_slash_is_received_as_without(client: AsyncTestClient[Any]) -> None:
    """Webhook POSTs skip Litestar's router (gateway.http.webhooks.WebhooksFirst), which matches exact
    paths only; any other spelling of the path still reaches the same receiver through the router."""
    response = await client.post(f"{IMAGE}/", json=completed_image())
    assert response.status_code == 200
    assert response.json()["outcome"] == "applied"
    again = await client.post(IMAGE, json=completed_image())
    assert again.json()["outcome"] == "duplicate"


async def test_a_bug_behind_a_webhook_is_a_logged_500_and_the_gateway_goes_on(
    client: AsyncTestClient[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception is ours, not the sender's: answered 500 in Litestar's shape (the sender
    retries), logged with its traceback, and the next webhook is received as usual."""
    from gateway.ingest import pipeline

    calls = 0

    def fail_once(event: object) -> object:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    original = pipeline.idempotency_keys
    monkeypatch.setattr(pipeline, "idempotency_keys", fail_once)
    with caplog.at_level(logging.ERROR):
        response = await client.post(IMAGE, json=completed_image())
    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal Server Error"}
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    monkeypatch.setattr(pipeline, "idempotency_keys", original)
    assert (await client.post(IMAGE, json=completed_image())).json()["outcome"] == "applied"
    assert calls == 1
