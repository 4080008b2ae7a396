"""Authorisation as a property of the routing table: every route that writes takes the API token.

The routes are enumerated from the app itself (its OpenAPI document, and its routing table for the routes
the document leaves out), so a route added later is checked without this file changing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from gateway.config import Settings
from gateway.http.app import create_app
from gateway.kinds import KINDS

TOKEN = "route-access-token-0123456789"
_READS = {"GET", "HEAD", "OPTIONS"}
_OWN_AUTHENTICATION = {("POST", "/api/session"), ("DELETE", "/api/session")} | {("POST", kind.route) for kind in KINDS}
"""The only writes the token does not guard: the webhooks (secret or signature) and signing in and out."""
_HIDDEN_OWN_AUTHENTICATION = {("POST", "/api/webhooks/{name}"), ("POST", "/api/senders/{name}/webhooks")}
"""Left out of the document: any other webhook path, and a sender route of no provider sender, answered 404
naming the real ones."""
_PARAMETER = re.compile(r"\{[^}]*\}")
_STREAM_STOPPER = {"Last-Event-ID": "not-a-number"}
"""Makes a live stream answer 400 at once instead of streaming forever; the other routes ignore it."""


async def _operations(client: AsyncTestClient[Any]) -> Iterator[tuple[str, str]]:
    document = (await client.get("/schema/openapi.json")).json()
    return iter(
        sorted(
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if method.upper() in {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"}
        )
    )


def _hidden_writes(app: Litestar, documented: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Write operations in the routing table that the OpenAPI document does not list."""
    writes = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            writes |= {(method, path) for method in route.methods if method not in _READS}
    return writes - documented


def _concrete(path: str) -> str:
    return _PARAMETER.sub("1", path)


@pytest.fixture(params=["token", "no-token"])
async def public_production(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """Production with ``GATEWAY_PUBLIC_READ=true``, with or without ``GATEWAY_API_TOKEN``; the client
    sends no credential at all."""
    token = TOKEN if request.param == "token" else None
    app = create_app(dataclasses.replace(settings, env="production", public_read=True, api_token=token))
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_every_write_route_needs_the_token_in_production_whatever_opens_reads(
    public_production: AsyncTestClient[Any],
) -> None:
    operations = set(await _operations(public_production))
    writes = {(method, path) for method, path in operations if method not in _READS}
    assert writes >= _OWN_AUTHENTICATION  # the exceptions are real routes: the check below is not vacuous
    guarded = writes - _OWN_AUTHENTICATION
    assert {("POST", "/api/jobs"), ("POST", "/api/deliveries/replay")} <= guarded
    hidden = _hidden_writes(public_production.app, operations)
    assert hidden - _HIDDEN_OWN_AUTHENTICATION == set()  # every other write is documented, so checked here
    opened = {}
    for method, path in sorted(guarded):
        response = await public_production.request(method, _concrete(path), json={})
        if response.status_code not in (401, 403):
            opened[f"{method} {path}"] = response.status_code
    assert opened == {}, "write routes open without GATEWAY_API_TOKEN under GATEWAY_PUBLIC_READ"


async def test_public_read_opens_every_read_route(public_production: AsyncTestClient[Any]) -> None:
    refused = {}
    for method, path in await _operations(public_production):
        if method in _READS:
            response = await public_production.request(method, _concrete(path), headers=_STREAM_STOPPER)
            if response.status_code in (401, 403):
                refused[f"{method} {path}"] = response.status_code
    assert refused == {}


async def test_the_token_opens_the_write_routes_public_read_keeps_closed(settings: Settings) -> None:
    app = create_app(dataclasses.replace(settings, env="production", public_read=True, api_token=TOKEN))
    async with AsyncTestClient(app=app) as client:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for method, path in await _operations(client):
            if method not in _READS and (method, path) not in _OWN_AUTHENTICATION:
                response = await client.request(method, _concrete(path), json={}, headers=bearer)
                assert response.status_code not in (401, 403), (method, path)


async def test_without_a_token_production_says_writes_are_closed(settings: Settings) -> None:
    app = create_app(dataclasses.replace(settings, env="production", public_read=True, api_token=None))
    async with AsyncTestClient(app=app) as client:
        response = await client.post("/api/jobs", json={"job_id": "j1", "kind": "image", "user_id": "u"})
        assert response.status_code == 403
        assert "GATEWAY_API_TOKEN" in response.json()["detail"]
        assert (await client.get("/api/jobs/j1")).status_code == 404  # nothing was registered


async def test_in_development_without_a_token_every_route_stays_open(client: AsyncTestClient[Any]) -> None:
    for method, path in await _operations(client):
        if (method, path) not in _OWN_AUTHENTICATION:
            response = await client.request(method, _concrete(path), json={}, headers=_STREAM_STOPPER)
            assert response.status_code not in (401, 403), (method, path)


_PUBLIC = {"/healthz", "/readyz", "/metrics"}
"""The only documented reads open to anyone whatever the settings; the status page (``/``, ``/status``)
and the OpenAPI document are open too, and hold no job data."""


async def test_with_a_token_every_read_but_health_and_metrics_needs_it(settings: Settings) -> None:
    """Reads are closed by default: a read route is open only if it says so."""
    app = create_app(dataclasses.replace(settings, api_token=TOKEN))
    async with AsyncTestClient(app=app) as client:
        answered = {}
        for method, path in await _operations(client):
            if method == "GET":
                response = await client.get(_concrete(path), headers=_STREAM_STOPPER)
                answered[path] = response.status_code == 401
        assert {path for path, refused in answered.items() if not refused} == _PUBLIC
        for path in ("/", "/status", "/schema/openapi.json"):
            assert (await client.get(path)).status_code == 200, path
