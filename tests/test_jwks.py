"""JWKS key sets (``jwks_url``): fetched from a real local HTTP server, rotated mid-test, taken down.

The on-demand refresh's once-a-minute bound is checked with an injected clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import CollectorRegistry

from gateway.jwks import InvalidKeySet, JwksState, KeySet, check_url, parse_key_set
from gateway.signatures import Ed25519PrivateKey, sign_v1a, verify_v1a
from gateway.telemetry.metrics import Metrics, ModelLabels

BODY = b'{"request_id": "req-1", "status": "OK"}'


def _jwk(key: Ed25519PrivateKey, kid: str = "k1") -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}


@dataclass
class JwksServer:
    """Serves a JWK Set over HTTP/1.1 on 127.0.0.1; ``down()`` closes the port, ``up()`` reopens it."""

    body: bytes = b'{"keys": []}'
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    def serve(self, *keys: Ed25519PrivateKey) -> None:
        self.body = json.dumps({"keys": [_jwk(key, f"k{i}") for i, key in enumerate(keys)]}).encode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        head = [f"HTTP/1.1 {self.status} X", f"content-length: {len(self.body)}", "connection: close"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + self.body)
        await writer.drain()
        writer.close()


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
                {"kty": "OKP", "crv": "X25519", "x": _jwk(theirs)["x"]},
                {**_jwk(theirs), "use": "enc"},
                _jwk(ours),
            ]
        }
    ).encode()
    keys = parse_key_set(body)
    assert len(keys) == 1
    assert verify_v1a(keys, "m", "1", BODY, sign_v1a(ours, "m", "1", BODY))


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
    assert check_url(url, allow_http=allow_http) == problem
