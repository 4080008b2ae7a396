"""JWKS key sets (``jwks_url``): fetched from a real local HTTP server, rotated mid-test, taken down.

The on-demand refresh's once-a-minute bound is checked with an injected clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.jwks import MAX_KEYS, InvalidKeySet, JwksState, KeySet, parse_key_set
from gateway.senders import check_jwks_url
from gateway.signatures import Ed25519PrivateKey, sign_v1a, verify_v1a
from gateway.telemetry.metrics import Metrics, ModelLabels
from tests.jwks_server import JwksServer, jwk

BODY = b'{"request_id": "req-1", "status": "OK"}'


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    jwks = JwksServer()
    await jwks.up()
    yield jwks
    if jwks._server is not None:
        await jwks.down()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _metrics() -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    return registry, Metrics(registry, ["image"], ModelLabels())


def _state(registry: CollectorRegistry, sender: str) -> dict[str, float | None]:
    return {
        state.value: registry.get_sample_value("gateway_jwks_state", {"sender": sender, "state": state.value})
        for state in JwksState
    }


def _signed(key: Ed25519PrivateKey) -> str:
    return sign_v1a(key, "msg_1", "1700000000", BODY)


def _verifies(keys: KeySet, header: str) -> bool:
    return verify_v1a(keys.keys, "msg_1", "1700000000", BODY, header)


async def test_a_set_fetched_at_start_up_verifies_the_senders_signatures(server: JwksServer) -> None:
    sender = Ed25519PrivateKey.generate()
    server.serve(sender)
    registry, metrics = _metrics()
    keys = KeySet("signer", server.url, metrics.jwks_state)
    await keys.start()
    try:
        assert keys.state is JwksState.FRESH
        assert _verifies(keys, _signed(sender))
        assert not _verifies(keys, _signed(Ed25519PrivateKey.generate()))
        assert _state(registry, "signer") == {"fresh": 1.0, "stale": 0.0, "unavailable": 0.0}
    finally:
        await keys.stop()


async def test_a_rotated_key_is_fetched_on_demand_at_most_once_a_minute(server: JwksServer) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    server.serve(old)
    clock = Clock()
    keys = KeySet("fal", server.url, clock=clock)
    await keys.refresh()
    server.serve(old, new)  # the provider publishes its next key and starts signing with it

    clock.now += 59
    assert not await keys.refresh_unknown()
    assert server.requests == 1
    assert not _verifies(keys, _signed(new))

    clock.now += 1
    assert await keys.refresh_unknown()
    assert server.requests == 2
    assert _verifies(keys, _signed(new))
    assert _verifies(keys, _signed(old))

    server.serve(new)  # the old key retires
    clock.now += 60
    assert await keys.refresh_unknown()
    assert not _verifies(keys, _signed(old))


async def test_concurrent_unknown_signatures_share_one_fetch(server: JwksServer) -> None:
    server.serve(Ed25519PrivateKey.generate())
    clock = Clock()
    keys = KeySet("fal", server.url, clock=clock)
    await keys.refresh()
    server.serve(Ed25519PrivateKey.generate())
    clock.now += 60
    changed = await asyncio.gather(*(keys.refresh_unknown() for _ in range(10)))
    assert server.requests == 2
    assert all(changed)


async def test_the_last_good_set_verifies_while_the_endpoint_is_down(
    server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    sender = Ed25519PrivateKey.generate()
    server.serve(sender)
    registry, metrics = _metrics()
    keys = KeySet("fal", server.url, metrics.jwks_state)
    await keys.refresh()
    await server.down()

    with caplog.at_level(logging.INFO, logger="gateway.jwks"):
        for _ in range(3):
            assert not await keys.refresh()
        assert keys.state is JwksState.STALE
        assert _verifies(keys, _signed(sender))
        assert _state(registry, "fal") == {"fresh": 0.0, "stale": 1.0, "unavailable": 0.0}

        await server.up()
        await keys.refresh()
    assert keys.state is JwksState.FRESH
    assert _state(registry, "fal")["fresh"] == 1.0
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines  # one line per change of state, not one per failed fetch
    assert "verifying with the last good set of 1 key(s)" in lines[0]
    assert "1 ed25519 key(s) for sender fal" in lines[1]


async def test_a_first_fetch_that_fails_leaves_the_sender_unavailable_until_one_succeeds(
    server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    sender = Ed25519PrivateKey.generate()
    server.serve(sender)
    await server.down()
    registry, metrics = _metrics()
    clock = Clock()
    keys = KeySet("fal", server.url, metrics.jwks_state, clock=clock)
    with caplog.at_level(logging.WARNING, logger="gateway.jwks"):
        await keys.start()  # the gateway starts regardless
        await keys.refresh()
    try:
        assert keys.state is JwksState.UNAVAILABLE
        assert keys.keys == ()
        assert _state(registry, "fal") == {"fresh": 0.0, "stale": 0.0, "unavailable": 1.0}
        assert keys.retry_after() == 60
        clock.now += 45.5
        assert keys.retry_after() == 15
        assert len(caplog.records) == 1
        assert "answered 503 until a set is fetched" in caplog.records[0].getMessage()

        await server.up()
        await keys.refresh()
        assert keys.state is JwksState.FRESH
        assert _verifies(keys, _signed(sender))
    finally:
        await keys.stop()


async def test_the_schedule_refreshes_the_set_in_the_background(server: JwksServer) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    server.serve(old)
    keys = KeySet("fal", server.url, refresh_seconds=0.01)
    await keys.start()
    try:
        server.serve(new)
        async with asyncio.timeout(30):
            while not _verifies(keys, _signed(new)):
                await asyncio.sleep(0.01)
        assert not _verifies(keys, _signed(old))
    finally:
        await keys.stop()


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (503, {}, b"unavailable"),
        (302, {"location": "http://elsewhere.invalid/jwks.json"}, b""),
        (200, {}, b"<html>not json</html>"),
        (200, {}, b"x" * (1024 * 1024 + 1)),
        (200, {}, b'{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}'),
    ],
    ids=["503", "redirect", "not-json", "too-large", "no-ed25519-key"],
)
async def test_an_answer_without_a_usable_set_counts_as_a_failed_fetch(
    server: JwksServer, status: int, headers: dict[str, str], body: bytes
) -> None:
    sender = Ed25519PrivateKey.generate()
    server.serve(sender)
    keys = KeySet("fal", server.url)
    await keys.refresh()
    server.status, server.headers, server.body = status, headers, body
    assert not await keys.refresh()
    assert keys.state is JwksState.STALE
    assert _verifies(keys, _signed(sender))


def test_only_ed25519_signing_keys_are_read_from_a_set() -> None:
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    body = json.dumps(
        {
            "keys": [
                {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
                {"kty": "OKP", "crv": "X25519", "x": jwk(theirs)["x"]},
                {**jwk(theirs), "use": "enc"},
                jwk(ours),
            ]
        }
    ).encode()
    keys = parse_key_set(body)
    assert len(keys) == 1
    assert verify_v1a(keys, "m", "1", BODY, sign_v1a(ours, "m", "1", BODY))


def test_a_set_of_more_keys_than_a_rotation_needs_is_refused() -> None:
    """fal's signatures name no key, so each is tried per request: a set of thousands would let anyone
    make every request slow. More than MAX_KEYS is refused (the last good set stays in use)."""
    many = [jwk(Ed25519PrivateKey.generate()) for _ in range(MAX_KEYS + 1)]
    assert len(parse_key_set(json.dumps({"keys": many[:MAX_KEYS]}).encode())) == MAX_KEYS
    with pytest.raises(InvalidKeySet, match=f"more than {MAX_KEYS}"):
        parse_key_set(json.dumps({"keys": many}).encode())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "not a JWK Set"),
        (b'{"keys": []}', "holds no ed25519 key"),
        (b'{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ"}]}', r"keys\[0\].x is not a 32-byte"),
        (b'{"keys": [{"kty": "OKP", "crv": "Ed25519"}]}', r"keys\[0\].x is not a 32-byte"),
    ],
)
def test_a_set_without_a_usable_key_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(InvalidKeySet, match=message):
        parse_key_set(body)


@pytest.mark.parametrize(
    ("url", "allow_http", "problem"),
    [
        ("https://rest.alpha.fal.ai/.well-known/jwks.json", False, None),
        ("http://127.0.0.1:8080/jwks.json", True, None),
        ("http://127.0.0.1:8080/jwks.json", False, "must start with https:// in production"),
        ("ftp://example.com/jwks.json", True, "must start with https:// or http://"),
        ("https:///jwks.json", False, "has no host"),
    ],
)
def test_a_jwks_url_is_https_in_production(url: str, allow_http: bool, problem: str | None) -> None:
    assert check_jwks_url(url, allow_http=allow_http) == problem
