"""The seed's five test scenarios (test-image-webhook.sh), over real HTTP against `gateway serve`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import JOB_ID, SECRET, LiveServer, completed_image, failed, progress

ROUTE = "/api/webhooks/image-completion"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One gateway for the module: only the first test writes (the seed's jobs), the others are refused."""
    server = LiveServer(tmp_path_factory.mktemp("seed"), {"WEBHOOK_SECRET": SECRET})
    yield server
    server.stop()


def post(server: LiveServer, payload: object) -> httpx.Response:
    return httpx.post(f"{server.url}{ROUTE}", json=payload, headers={"X-Webhook-Secret": SECRET})


def test_the_five_seed_scenarios(live_server: LiveServer) -> None:
    # 1. Successful generation (completed)
    response = post(live_server, completed_image())
    assert response.status_code == 200
    assert response.json() == {"received": True, "job_id": JOB_ID, "status": "completed", "outcome": "applied"}

    # 2. Failed generation (failed), on another job
    response = post(live_server, failed(job_id="job-that-fails"))
    assert response.status_code == 200
    assert response.json()["status"] == "failed"

    # 3. Intermediate status (generating) is acknowledged
    response = post(live_server, progress("generating", job_id="job-in-progress"))
    assert response.status_code == 200
    assert response.json() == {
        "received": True,
        "job_id": "job-in-progress",
        "status": "generating",
        "outcome": "applied",
    }

    # 4. Idempotency: the same completed webhook again
    response = post(live_server, completed_image())
    assert response.status_code == 200
    assert response.json()["outcome"] == "duplicate"
    history = httpx.get(f"{live_server.url}/api/jobs/{JOB_ID}").json()["history"]
    assert len(history) == 1

    # 5. Invalid payload (missing data) is a 400 naming the field
    response = post(live_server, {"job_id": JOB_ID, "status": "completed", "timestamp": "2025-10-21T16:45:00Z"})
    assert response.status_code == 400
    assert "data" in response.json()["detail"]


def test_unauthenticated_request_is_refused_by_the_server(live_server: LiveServer) -> None:
    response = httpx.post(f"{live_server.url}{ROUTE}", json=completed_image())
    assert response.status_code == 401


def test_chunked_body_over_the_limit_is_413(live_server: LiveServer) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b" " * 100_000

    response = httpx.post(
        f"{live_server.url}{ROUTE}",
        content=chunks(),
        headers={"X-Webhook-Secret": SECRET, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "1048576 bytes" in response.json()["detail"]
