"""Rate limiting through the in-process app, as a sender sees it: 429s, their headers, the retry that then
succeeds, what counts against a budget, and who is a sender behind a proxy."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.config import Rate, Settings
from gateway.http.app import create_app
from tests.conftest import SECRET, completed_image

IMAGE = "/api/webhooks/image-completion"
Peer = Callable[[str], httpx.AsyncClient]


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Peer]:
    """The app with its lifespan running, and a client per peer address (the test client has none)."""
    app: Litestar = create_app(settings)
    clients: list[httpx.AsyncClient] = []

    def peer(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway.test")
        client.headers["X-Webhook-Secret"] = SECRET
        clients.append(client)
        return client

    async with app.lifespan():  # on this test's event loop, where the requests run too
        yield peer
        for client in clients:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Callable[..., AbstractAsyncContextManager[Peer]]:
    """``running`` with ``settings`` overridden, on the in-memory store or on the real Redis."""
    extra: dict[str, Any] = {}
    if request.param == "redis":
        extra = {
            "redis_url": request.getfixturevalue("redis_url"),
            "redis_key_prefix": request.getfixturevalue("redis_prefix"),
        }

    def start(**overrides: Any) -> AbstractAsyncContextManager[Peer]:
        return running(replace(settings, **extra, **overrides))

    return start


async def test_over_the_limit_a_webhook_gets_429_with_retry_after_and_changes_nothing(
    backend: Callable[..., AbstractAsyncContextManager[Peer]],
) -> None:
    async with backend(rate_limit=Rate(count=2, window_seconds=60, burst=2)) as peer:
        sender = peer("192.0.2.10")
        first = await sender.post(IMAGE, json=completed_image(job_id="first"))
        assert first.status_code == 200
        assert first.headers["RateLimit-Policy"] == '"sender";q=2;w=60'
        assert first.headers["RateLimit"] == '"sender";r=1;t=30'
        assert (await sender.post(IMAGE, json=completed_image(job_id="second"))).status_code == 200

        refused = await sender.post(IMAGE, json=completed_image(job_id="third"))
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] in {"29", "30"}  # one request every 30 s, minus elapsed time
        assert refused.headers["RateLimit"] == f'"sender";r=0;t={refused.headers["Retry-After"]}'
        assert refused.headers["RateLimit-Policy"] == '"sender";q=2;w=60'
        assert refused.json()["detail"].startswith("Rate limit exceeded")
        assert (await sender.get("/api/jobs/third")).status_code == 404


async def test_waiting_retry_after_then_retrying_succeeds(
    backend: Callable[..., AbstractAsyncContextManager[Peer]],
) -> None:
    async with backend(rate_limit=Rate(count=1, window_seconds=1, burst=1)) as peer:
        sender = peer("192.0.2.11")
        assert (await sender.post(IMAGE, json=completed_image())).status_code == 200
        refused = await sender.post(IMAGE, json=completed_image(job_id="next"))
        assert refused.status_code == 429
        await asyncio.sleep(int(refused.headers["Retry-After"]))
        retried = await sender.post(IMAGE, json=completed_image(job_id="next"))
        assert retried.status_code == 200
        assert retried.json()["outcome"] == "applied"


async def test_requests_failing_authentication_spend_the_budget_too(settings: Settings) -> None:
    """Guessing secrets is throttled: 401s count, and once the budget is spent even the right secret waits."""
    async with running(replace(settings, rate_limit=Rate(count=2, window_seconds=60, burst=2))) as peer:
        sender = peer("192.0.2.12")
        for guess in ("wrong-1", "wrong-2"):
            answer = await sender.post(IMAGE, json=completed_image(), headers={"X-Webhook-Secret": guess})
            assert answer.status_code == 401
        assert (await sender.post(IMAGE, json=completed_image())).status_code == 429


async def test_the_limit_applies_before_the_request_is_read(settings: Settings) -> None:
    """A refused request is refused for its rate, whatever its body or headers: nothing else was looked at."""
    async with running(replace(settings, rate_limit=Rate(count=1, window_seconds=60, burst=1))) as peer:
        sender = peer("192.0.2.13")
        await sender.post(IMAGE, json=completed_image())
        oversized = await sender.post(IMAGE, content=b"{}", headers={"Content-Length": "999999999"})
        assert oversized.status_code == 429
        not_json = await sender.post(IMAGE, content=b"x", headers={"Content-Type": "text/plain"})
        assert not_json.status_code == 429


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(settings: Settings) -> None:
    limited = replace(settings, rate_limit=Rate(count=1, window_seconds=60, burst=1))
    async with running(limited) as peer:
        sender = peer("198.51.100.20")
        assert (await sender.post(IMAGE, json=completed_image(), headers={"X-Forwarded-For": "1.1.1.1"})).is_success
        spoofed = await sender.post(IMAGE, json=completed_image(), headers={"X-Forwarded-For": "2.2.2.2"})
        assert spoofed.status_code == 429


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(settings: Settings) -> None:
    trusting = replace(
        settings,
        rate_limit=Rate(count=1, window_seconds=60, burst=1),
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
    )
    async with running(trusting) as peer:
        proxy = peer("10.0.0.2")
        for client in ("203.0.113.1", "203.0.113.2"):
            answer = await proxy.post(IMAGE, json=completed_image(), headers={"X-Forwarded-For": client})
            assert answer.status_code == 200
        again = await proxy.post(IMAGE, json=completed_image(), headers={"X-Forwarded-For": "203.0.113.1"})
        assert again.status_code == 429
        # A client forging an extra hop in front of the proxy's is still itself.
        forged = await proxy.post(
            IMAGE, json=completed_image(), headers={"X-Forwarded-For": "203.0.113.9, 203.0.113.2"}
        )
        assert forged.status_code == 429


async def test_without_a_configured_limit_answers_carry_no_ratelimit_headers(client: AsyncTestClient[Any]) -> None:
    answer = await client.post(IMAGE, json=completed_image())
    assert answer.status_code == 200
    assert "RateLimit" not in answer.headers
    assert "RateLimit-Policy" not in answer.headers


async def test_the_openapi_document_announces_429(client: AsyncTestClient[Any]) -> None:
    responses = (await client.get("/schema/openapi.json")).json()["paths"][IMAGE]["post"]["responses"]
    assert "Retry-After" in responses["429"]["description"]
