"""The read API's token (``GATEWAY_API_TOKEN``): bearer, session cookie, refusals, production start-up."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.config import Settings
from gateway.http.app import create_app
from gateway.http.auth import SESSION_COOKIE, SESSION_SECONDS, ApiAccess
from tests.conftest import SECRET, LiveServer, completed_image
from tests.test_cli import run_gateway
from tests.test_registration import registration as registration_body

TOKEN = "read-api-token-0123456789abcdef"
READ_ROUTES = ("/api/jobs", "/api/jobs/stats", "/api/jobs/some-job", "/api/jobs/events", "/api/jobs/some-job/events")


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """An app with a read token; the client sends the webhook secret (and nothing else) by default."""
    app = create_app(dataclasses.replace(settings, api_token=TOKEN))
    async with AsyncTestClient(app=app) as test_client:
        test_client.headers["X-Webhook-Secret"] = SECRET
        yield test_client


async def test_every_read_route_needs_the_token_and_says_what_to_send(guarded: AsyncTestClient[Any]) -> None:
    for path in READ_ROUTES:
        response = await guarded.get(path)
        assert response.status_code == 401, path
        assert "Authorization: Bearer" in response.json()["detail"]
        assert "POST /api/session" in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    registration = {"job_id": "j1", "kind": "image", "user_id": "u"}
    assert (await guarded.post("/api/jobs", json=registration)).status_code == 401


async def test_the_bearer_token_opens_the_read_api(guarded: AsyncTestClient[Any]) -> None:
    assert (await guarded.post("/api/webhooks/image-completion", json=completed_image(job_id="j1"))).status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await guarded.get("/api/jobs/j1", headers=bearer)).json()["status"] == "completed"
    registration = {"job_id": "j2", "kind": "image", "user_id": "u"}
    assert (await guarded.post("/api/jobs", json=registration, headers=bearer)).status_code == 201
    assert (await guarded.get("/api/jobs", headers={"Authorization": f"bearer {TOKEN}"})).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", f"Bearer {SECRET}", TOKEN],
    ids=["longer", "shorter", "empty", "basic", "webhook-secret", "no-scheme"],
)
async def test_a_wrong_credential_is_401(guarded: AsyncTestClient[Any], authorization: str) -> None:
    response = await guarded.get("/api/jobs", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert TOKEN not in response.text


async def test_webhooks_never_need_the_read_token(guarded: AsyncTestClient[Any]) -> None:
    response = await guarded.post("/api/webhooks/image-completion", json=completed_image(job_id="j1"))
    assert response.status_code == 200


async def test_a_browser_signs_in_once_and_reads_with_its_cookie(guarded: AsyncTestClient[Any]) -> None:
    wrong = await guarded.post("/api/session", json={"token": "not-the-token"})
    assert wrong.status_code == 401
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")

    response = await guarded.post("/api/session", json={"token": TOKEN})
    assert response.status_code == 200
    assert response.json()["token_required"] is True
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/", f"max-age={SESSION_SECONDS}"} <= attributes
    assert TOKEN not in cookie
    assert (await guarded.get("/api/jobs")).status_code == 200  # the client keeps the cookie

    signed_out = await guarded.delete("/api/session")
    assert signed_out.status_code == 204
    assert "max-age=0" in signed_out.headers["set-cookie"].lower()
    guarded.cookies.clear()
    assert (await guarded.get("/api/jobs")).status_code == 401


async def test_a_forged_or_tampered_cookie_is_401(guarded: AsyncTestClient[Any]) -> None:
    value = (await guarded.post("/api/session", json={"token": TOKEN})).cookies[SESSION_COOKIE]
    expires, _, mac = value.partition(".")
    guarded.cookies.clear()
    for forged in (f"{int(expires) + 3600}.{mac}", f"{expires}.{mac[:-2]}AA", "garbage", f"{expires}."):
        response = await guarded.get("/api/jobs", headers={"Cookie": f"{SESSION_COOKIE}={forged}"})
        assert response.status_code == 401, forged
        assert "Session expired or invalid" in response.json()["detail"]


def test_a_session_expires_and_a_new_token_signs_everyone_out() -> None:
    now = [1_000_000.0]
    access = ApiAccess(TOKEN, clock=lambda: now[0])
    value, expires = access.sign()
    assert expires == 1_000_000 + SESSION_SECONDS
    assert access.session_valid(value)
    now[0] += SESSION_SECONDS + 1
    assert not access.session_valid(value)
    now[0] -= SESSION_SECONDS
    assert not ApiAccess(TOKEN + "-rotated", clock=lambda: now[0]).session_valid(value)


async def test_without_a_token_the_read_api_is_open(client: AsyncTestClient[Any]) -> None:
    assert (await client.get("/api/jobs")).status_code == 200
    session = await client.post("/api/session", json={"token": "anything"})
    assert session.json() == {"token_required": False, "expires_at": None}
    assert "set-cookie" not in session.headers


def test_production_refuses_to_start_without_the_token(tmp_path: Path) -> None:
    env = {"GATEWAY_ENV": "production", "WEBHOOK_SECRET": SECRET}
    result = run_gateway(tmp_path, "serve", env=env)
    assert result.returncode == 2
    assert "GATEWAY_API_TOKEN" in result.stderr
    assert "GATEWAY_PUBLIC_READ" in result.stderr


def test_production_starts_with_the_token_and_guards_reads(tmp_path: Path, stopping: list[LiveServer]) -> None:
    env = {"GATEWAY_ENV": "production", "WEBHOOK_SECRET": SECRET, "GATEWAY_API_TOKEN": TOKEN}
    server = LiveServer(tmp_path, env)
    stopping.append(server)
    assert httpx.get(f"{server.url}/api/jobs").status_code == 401
    assert httpx.get(f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_production_with_public_read_starts_open_for_reads_only(tmp_path: Path, stopping: list[LiveServer]) -> None:
    env = {"GATEWAY_ENV": "production", "WEBHOOK_SECRET": SECRET, "GATEWAY_PUBLIC_READ": "true"}
    server = LiveServer(tmp_path, env)
    stopping.append(server)
    assert httpx.get(f"{server.url}/api/jobs").status_code == 200
    refused = httpx.post(f"{server.url}/api/jobs", json=registration_body("public-1"))
    assert refused.status_code == 403
    assert "GATEWAY_API_TOKEN" in refused.json()["detail"]


def test_a_short_token_is_refused_at_start(tmp_path: Path) -> None:
    result = run_gateway(tmp_path, "serve", env={"GATEWAY_API_TOKEN": "short"})
    assert result.returncode == 2
    assert "GATEWAY_API_TOKEN" in result.stderr
    assert "short" not in result.stderr.replace("GATEWAY_API_TOKEN", "")


async def test_the_session_cookie_opens_reads_but_never_a_change(guarded: AsyncTestClient[Any]) -> None:
    """A cookie is sent with any request the browser makes, a forged cross-site one included (CSRF):
    registering a job or replaying deliveries takes the bearer token."""
    assert (await guarded.post("/api/session", json={"token": TOKEN})).status_code == 200
    assert (await guarded.get("/api/jobs")).status_code == 200
    registration = registration_body("csrf-1")
    refused = await guarded.post("/api/jobs", json=registration)
    assert refused.status_code == 401
    assert "Bearer" in refused.json()["detail"]
    assert (await guarded.post("/api/deliveries/replay?state=dead")).status_code == 401
    assert (await guarded.get("/api/jobs/csrf-1")).status_code == 404  # nothing was registered
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await guarded.post("/api/jobs", json=registration, headers=bearer)).status_code == 201
