"""Request-head bounds on a real ``gateway serve`` (uvicorn + httptools): absurd header sizes and counts
get 431 before the app sees them, requests within the bounds and large bodies are unaffected, and a
chunked body over real HTTP is applied once (or refused with 413 past the body limit)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from gateway.http.limits import MAX_HEAD_BYTES, MAX_HEADERS
from tests.conftest import SECRET, LiveServer, completed_image

IMAGE = "/api/webhooks/image-completion"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("limits"), {"WEBHOOK_SECRET": SECRET, "GATEWAY_MAX_BODY_BYTES": "100000"})
    yield live
    live.stop()


def exchange(server: LiveServer, head: bytes, body: bytes = b"") -> bytes:
    """Send raw bytes, read the answer until the server closes or 2 s pass."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def head(*extra: bytes) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(extra) + b"\r\n"


def test_too_many_headers_are_refused_with_431(server: LiveServer) -> None:
    answer = exchange(server, head(*(b"X-%d: a\r\n" % n for n in range(MAX_HEADERS + 50))))
    assert answer.startswith(b"HTTP/1.1 431 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["status_code"] == 431
    assert "at most 100 fields" in body["detail"]


@pytest.mark.parametrize("where", ["header", "url"])
def test_a_head_over_64_kib_is_refused_with_431(server: LiveServer, where: str) -> None:
    filler = b"a" * (MAX_HEAD_BYTES + 1000)
    raw = head(b"X-Big: " + filler + b"\r\n") if where == "header" else b"GET /healthz?" + filler + b" HTTP/1.1\r\n\r\n"
    assert exchange(server, raw).startswith(b"HTTP/1.1 431 ")


def test_requests_within_the_bounds_and_large_bodies_are_unaffected(server: LiveServer) -> None:
    near_limit = head(*(b"X-%d: %s\r\n" % (n, b"b" * 500) for n in range(MAX_HEADERS - 2)))
    assert exchange(server, near_limit).startswith(b"HTTP/1.1 200 ")
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
