"""The transport's bounds and answers on a real ``gateway serve`` (uvicorn + httptools, gateway/http/limits.py):
absurd header sizes and counts get 431 before the app sees them, requests within the bounds and large bodies
are unaffected, a chunked body over real HTTP is applied once (or refused with 413 past the body limit);
every request the parser refuses gets a JSON 400 naming what was wrong; a stalled head or body gets 408, a
silent connection is closed; bodies past GATEWAY_MAX_BUFFERED_BYTES get 503 before they are read; wrong
webhook credentials get 401 before the body is read; each route reads no more body than it takes."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litestar.handlers import HTTPRouteHandler

from gateway.config import Settings, SqliteDatabase
from gateway.http.app import create_app
from gateway.http.auth import SIGN_IN_MAX_BYTES
from gateway.http.limits import MAX_HEAD_BYTES, MAX_HEADERS
from tests.conftest import SECRET, LiveServer, completed_image
from tests.rawhttp import exchange

IMAGE = "/api/webhooks/image-completion"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("limits"), {"WEBHOOK_SECRET": SECRET, "GATEWAY_MAX_BODY_BYTES": "100000"})
    yield live
    live.stop()


def error_of(answer: bytes) -> tuple[int, dict[str, object]]:
    """The status and JSON body of an answer in the gateway's error shape (its content type checked)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    return int(head.split(b" ", 2)[1]), json.loads(body)


def head(*extra: bytes) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(extra) + b"\r\n"


def test_too_many_headers_are_refused_with_431(server: LiveServer) -> None:
    answer = exchange(server.port, head(*(b"X-%d: a\r\n" % n for n in range(MAX_HEADERS + 50))))
    assert answer.startswith(b"HTTP/1.1 431 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["status_code"] == 431
    assert "at most 100 fields" in body["detail"]


@pytest.mark.parametrize("where", ["header", "url"])
def test_a_head_over_64_kib_is_refused_with_431(server: LiveServer, where: str) -> None:
    filler = b"a" * (MAX_HEAD_BYTES + 1000)
    raw = head(b"X-Big: " + filler + b"\r\n") if where == "header" else b"GET /healthz?" + filler + b" HTTP/1.1\r\n\r\n"
    assert exchange(server.port, raw).startswith(b"HTTP/1.1 431 ")


def test_requests_within_the_bounds_and_large_bodies_are_unaffected(server: LiveServer) -> None:
    near_limit = head(*(b"X-%d: %s\r\n" % (n, b"b" * 500) for n in range(MAX_HEADERS - 2)))
    assert exchange(server.port, near_limit).startswith(b"HTTP/1.1 200 ")
    payload = completed_image("limits-big-body") | {"padding": "p" * 90_000}  # unknown fields are ignored
    response = httpx.post(f"{server.url}{IMAGE}", json=payload, headers={"X-Webhook-Secret": SECRET}, timeout=5)
    assert response.status_code == 200, response.text


def test_a_chunked_body_over_http_is_applied_once_and_one_past_the_limit_is_413(server: LiveServer) -> None:
    body = json.dumps(completed_image("limits-chunked")).encode()

    def chunks(data: bytes, size: int) -> Iterator[bytes]:
        yield from (data[start : start + size] for start in range(0, len(data), size))

    headers = {"X-Webhook-Secret": SECRET, "Content-Type": "application/json"}
    first = httpx.post(f"{server.url}{IMAGE}", content=chunks(body, 7), headers=headers, timeout=5)
    again = httpx.post(f"{server.url}{IMAGE}", content=chunks(body, 50), headers=headers, timeout=5)
    assert first.request.headers["transfer-encoding"] == "chunked"
    assert (first.status_code, first.json()["outcome"]) == (200, "applied")
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    huge = json.dumps(completed_image("limits-chunked-huge") | {"padding": "p" * 200_000}).encode()
    refused = httpx.post(f"{server.url}{IMAGE}", content=chunks(huge, 8192), headers=headers, timeout=5)
    assert refused.status_code == 413
    assert httpx.get(f"{server.url}/api/jobs/limits-chunked-huge", timeout=5).status_code == 404


# --- Every answer the transport gives: JSON, saying what was wrong, and the connection closed after it --------


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", "Content-Length"),
        (
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "Duplicate Content-Length",
        ),
        (
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding can't be present with Content-Length",
        ),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", "Transfer-Encoding"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", "LF after header value"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "header value char"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", "header token"),
        (b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "method"),
        (b"GET /healthz HTTP/9.1\r\nHost: x\r\n\r\n", "HTTP version"),
        (b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", "url"),
        (b"\x16\x03\x01\x00\xa5\x01\x00", "method"),  # TLS spoken to the plain-HTTP port
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2 without an upgrade"),
    ],
    ids=[
        "invalid-content-length",
        "duplicate-content-length",
        "content-length-with-transfer-encoding",
        "bad-chunk-size",
        "unsupported-transfer-encoding",
        "cr-in-header",
        "nul-in-header",
        "space-in-header-name",
        "bad-method",
        "bad-version",
        "non-ascii-path",
        "tls-handshake",
        "http2-preface",
    ],
)
def test_a_request_the_parser_refuses_gets_a_json_400_naming_what_is_wrong(
    server: LiveServer, raw: bytes, named: str
) -> None:
    answer = exchange(server.port, raw)
    status, body = error_of(answer)
    assert (status, body["status_code"]) == (400, 400)
    assert str(body["detail"]).startswith("Invalid HTTP request: ")
    assert named in str(body["detail"])
    assert b"connection: close" in answer.lower()


def test_the_431_answers_are_json_too(server: LiveServer) -> None:
    status, body = error_of(exchange(server.port, head(*(b"X-%d: a\r\n" % n for n in range(MAX_HEADERS + 1)))))
    assert (status, body["status_code"]) == (431, 431)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A gateway with a 1 s body deadline and room for two 100 000-byte bodies at once."""
    live = LiveServer(
        tmp_path_factory.mktemp("strict"),
        {
            "WEBHOOK_SECRET": SECRET,
            "GATEWAY_MAX_BODY_BYTES": "100000",
            "GATEWAY_MAX_BUFFERED_BYTES": "250000",
            "GATEWAY_BODY_TIMEOUT_SECONDS": "1",
        },
    )
    yield live
    live.stop()


def webhook_head(length: int, secret: str = SECRET) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"X-Webhook-Secret: %s\r\n\r\n" % (IMAGE.encode(), length, secret.encode())
    )


def test_a_stalled_body_gets_408_and_the_connection_closed(strict: LiveServer) -> None:
    answer = exchange(strict.port, webhook_head(1000), b'{"job_id": ', timeout=10, stall=True)
    status, body = error_of(answer)
    assert (status, body["status_code"]) == (408, 408)
    assert body["detail"] == "The request body stalled: no byte for 1 seconds"
    assert b"connection: close" in answer.lower()
    assert answer.count(b"HTTP/1.1 ") == 1  # the application's own answer to the cut-off body is not written


def test_a_stalled_head_gets_408(strict: LiveServer) -> None:
    status, body = error_of(exchange(strict.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", timeout=10, stall=True))
    assert (status, body["status_code"]) == (408, 408)
    assert "request head stalled" in str(body["detail"])


def test_a_trickled_head_gets_408_though_each_byte_is_progress(strict: LiveServer) -> None:
    """A head must be whole within the deadline of its first byte: slowloris cannot hold a connection."""
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        answer = b""
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                answer += sock.recv(4096)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
    assert error_of(answer)[0] == 408


def test_a_silent_connection_and_an_idle_one_are_closed_after_the_keep_alive_timeout(strict: LiveServer) -> None:
    """Keep-alive is 5 s for a connection that never asked anything as for one idle after its answer: both
    are still open 4 s on, and closed after it without an answer. (Both are watched at once: one wait.)"""
    with (
        socket.create_connection(("127.0.0.1", strict.port), timeout=4) as silent,
        socket.create_connection(("127.0.0.1", strict.port), timeout=4) as idle,
    ):
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):  # head and body may come in two segments
            answer += idle.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 ")
        readable, _, _ = select.select([silent, idle], [], [], 4)
        assert readable == []  # neither written to nor closed before the keep-alive timeout ...
        for sock in (silent, idle):
            sock.settimeout(10)
            assert sock.recv(1) == b""  # ... and both closed after it


def test_bodies_past_the_buffered_bytes_bound_get_503_before_they_are_read(strict: LiveServer) -> None:
    """Two bodies of 100 000 bytes being read hold 200 000 of the 250 000 bytes: a third gets 503 at once."""
    holders = [socket.create_connection(("127.0.0.1", strict.port), timeout=10) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(webhook_head(100_000) + b"{")
        time.sleep(0.3)  # both heads read and their bodies reserved
        answer = exchange(strict.port, webhook_head(100_000), b"{", timeout=5, stall=True)
        status, body = error_of(answer)
        assert (status, body["status_code"]) == (503, 503)
        assert "GATEWAY_MAX_BUFFERED_BYTES" in str(body["detail"])
        assert b"retry-after: 1" in answer.lower()
        # A request without a body holds nothing: still answered while the bound is reached.
        assert exchange(strict.port, head()).startswith(b"HTTP/1.1 200 ")
        small = exchange(strict.port, webhook_head(20_000), b"{", timeout=5, stall=True)  # 40 000 bytes fit
        assert error_of(small)[0] == 408  # read (and stalled), not refused
    finally:
        for sock in holders:
            sock.close()
    time.sleep(0.3)  # the holders' reservations are given back when their connections close
    headers = {"X-Webhook-Secret": SECRET}
    after = httpx.post(f"{strict.url}{IMAGE}", json=completed_image("bounds-after-503"), headers=headers, timeout=5)
    assert after.status_code == 200


def test_wrong_credentials_get_401_before_the_body_is_read_and_the_connection_is_closed(server: LiveServer) -> None:
    """The 401 comes back while most of the body is unsent: the gateway did not wait for (or hold) it."""
    answer = exchange(server.port, webhook_head(90_000, secret="wrong"), b"{" * 1000, timeout=5)
    _, body = error_of(answer)
    assert body == {"status_code": 401, "detail": "Missing or invalid webhook credentials"}
    assert b"connection: close" in answer.lower()


def test_a_sign_in_body_over_4_kib_is_413_before_it_is_read(live_server: LiveServer) -> None:
    token = {"token": "t" * 5000}
    response = httpx.post(f"{live_server.url}/api/session", json=token, timeout=5)
    assert response.status_code == 413
    assert response.json() == {
        "status_code": 413,
        "detail": 'A sign-in body is {"token": "<token>"}: at most 4096 bytes',
    }
    raw = b"POST /api/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10000000\r\n\r\n{"
    answer = exchange(live_server.port, raw)
    assert error_of(answer)[0] == 413
    assert httpx.post(f"{live_server.url}/api/session", json={"token": "x"}, timeout=5).status_code == 200


def test_every_route_reads_at_most_the_body_limit(tmp_path: Path) -> None:
    """Litestar's own default is 10 MB: every route is bounded by GATEWAY_MAX_BODY_BYTES, sign-in by 4 KiB."""
    app = create_app(Settings(database=SqliteDatabase(str(tmp_path / "routes.db")), max_body_bytes=50_000))
    limits = {
        (route.path, method): handler.resolve_request_max_body_size()
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if isinstance(handler, HTTPRouteHandler)
        for method in handler.http_methods
    }
    assert limits[("/api/session", "POST")] == SIGN_IN_MAX_BYTES
    assert limits[("/api/jobs", "POST")] == 50_000
    assert all(limit is not None and limit <= 50_000 for limit in limits.values()), limits
