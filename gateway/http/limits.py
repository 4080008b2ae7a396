"""The transport's bounds and answers: what a connection may hold, for how long, and how it is refused.

uvicorn's httptools protocol, as it comes, buffers a request's head however large it is, waits forever
for a head or a body that stalls (and for a connection that never sends a byte), lets bodies being read
hold any amount of memory together, and answers a malformed request with a ``text/plain`` 400. This
protocol adds, before the application sees anything:

- a head over :data:`MAX_HEAD_BYTES` or :data:`MAX_HEADERS` fields: ``431``;
- a head not complete :attr:`TransportBounds.body_timeout` seconds after its first byte, or a body with no
  new byte for that long: ``408``; a new connection that sends nothing for the keep-alive timeout is closed
  (as uvicorn closes an idle keep-alive connection);
- a body that would take the bytes held by bodies being read, all connections together, past
  :attr:`TransportBounds.max_buffered_bytes`: ``503`` with ``Retry-After``, before it is read (each body
  counts its ``Content-Length``, up to the body limit; a chunked one counts the body limit);
- a request the parser refuses (``Content-Length`` invalid, duplicated or beside ``Transfer-Encoding``, a
  bad chunk size, a CR or NUL in a header, ...): ``400`` naming what the parser found wrong.

Each answer is the gateway's JSON error shape ``{"status_code", "detail"}``, and the connection is closed
after it. Deadlines are checked by one timer per process every :data:`CHECK_SECONDS` (no timer per
request), so one fires up to that much late. Built on uvicorn's internals: the version range it was
verified with is pinned in pyproject.toml. All of it runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Collection
from typing import ClassVar, NamedTuple

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.http.coalesce import CoalescingTransport

__all__ = (
    "BUSY_RETRY_AFTER_SECONDS",
    "CHECK_SECONDS",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "BoundedHttpToolsProtocol",
    "TransportBounds",
    "bounded_protocol",
)

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
"""Most bytes of a request line and headers together (nginx allows 32 KiB by default, Node 16 KiB)."""
MAX_HEADERS = 100
"""Most header fields in one request (Apache's LimitRequestFields default)."""
CHECK_SECONDS = 1.0
"""How often the deadlines of every connection are checked."""
BUSY_RETRY_AFTER_SECONDS = 1
"""What the 503 for a full body budget asks the sender to wait: bodies being read finish in moments."""


class TransportBounds(NamedTuple):
    """The bounds one server's connections share (from :class:`~gateway.config.Settings`)."""

    body_timeout: float = 30.0
    """``GATEWAY_BODY_TIMEOUT_SECONDS``."""
    idle_timeout: float = 5.0
    """uvicorn's keep-alive timeout: how long a new connection may stay silent."""
    max_body_bytes: int = 1024 * 1024
    """``GATEWAY_MAX_BODY_BYTES``: what a chunked body (or a larger announced one) counts against the budget."""
    max_buffered_bytes: int = 64 * 1024 * 1024
    """``GATEWAY_MAX_BUFFERED_BYTES``."""


def _answer(status: int, reason: bytes, detail: str, *headers: bytes) -> bytes:
    """A whole response in the gateway's JSON error shape, closing the connection."""
    body = msgspec.json.encode({"status_code": status, "detail": detail})
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (status, reason, len(body)),
            *(header + b"\r\n" for header in headers),
            b"connection: close\r\n\r\n",
            body,
        )
    )


_HEAD_TOO_LARGE = _answer(
    431,
    b"Request Header Fields Too Large",
    f"Request headers too large: at most {MAX_HEADERS} fields and {MAX_HEAD_BYTES} bytes",
)
_MAX_REASON = 200
_REASONS = {"Pause on PRI/Upgrade": "HTTP/2 without an upgrade; this port speaks HTTP/1.1"}
"""The parser's reasons that would not tell a sender what was wrong, said plainly."""


class _Refused(Exception):
    """Raised from a parser callback: the parser stops, and uvicorn calls ``send_400_response``."""


class _Budget:
    """The bytes reserved by bodies being read on one server, and the deadline check's timer."""

    __slots__ = ("held", "refused", "running")

    def __init__(self) -> None:
        self.held = 0
        self.refused = 0
        self.running = False


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of this module; :func:`bounded_protocol` configures it."""

    bounds: ClassVar[TransportBounds] = TransportBounds()
    budget: ClassVar[_Budget] = _Budget()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._reading_head = True
        self._refusal: bytes | None = None
        self._received = 0
        """Every byte received: what the deadline check compares between two checks."""
        self._seen = 0
        self._progress_at = self.loop.time()
        self._head_since: float | None = None
        self._reserved: list[int] = []
        """Each request's reservation against the budget, oldest first (two with a pipelined request)."""
        super().connection_made(transport)
        # A response's head and body leave in one send (gateway.http.coalesce); uvicorn's flow control
        # keeps the transport itself.
        self.transport = CoalescingTransport(transport, self.loop)
        if not self.budget.running:
            self.budget.running = True
            self.loop.call_later(CHECK_SECONDS, _check_all, self.loop, self.connections, self.budget)

    def connection_lost(self, exc: Exception | None) -> None:
        self.budget.held -= sum(self._reserved)
        self._reserved.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still incomplete past the bound (one endless header, say) is refused here, so at most one
        # chunk over the bound is ever buffered; a complete head is measured exactly in on_headers_complete.
        if self._reading_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(_HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        self._head_size = 0
        self._announced = b""
        self._chunked = False
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if len(self.headers) >= MAX_HEADERS:
            self._refusal = _HEAD_TOO_LARGE
            raise _Refused
        super().on_header(name, value)
        field = self.headers[-1][0]  # lower-cased by uvicorn
        if field == b"content-length":
            self._announced = value
        elif field == b"transfer-encoding":
            self._chunked = True

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if self._head_size > MAX_HEAD_BYTES:  # a head that arrived whole in the chunk crossing the bound
            self._refusal = _HEAD_TOO_LARGE
            raise _Refused
        limit = self.bounds.max_body_bytes
        # The parser has checked Content-Length (digits, one value, no Transfer-Encoding beside it).
        size = limit if self._chunked else min(int(self._announced or 0), limit)
        if size:
            if self.budget.held + size > self.bounds.max_buffered_bytes:
                # Not a parser error (uvicorn would log one): answered here, the request never starts, and
                # what the parser still has of this chunk is ignored (on_body, on_message_complete).
                self.budget.refused += 1
                self._refuse(_busy(self.bounds.max_buffered_bytes), log=False)
                return
            self.budget.held += size
        self._reserved.append(size)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None:
            return
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        if self._reserved:
            self.budget.held -= self._reserved.pop(0)
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this while handling the parser's exception: that exception says what was wrong.
        self._refuse(self._refusal or _invalid(sys.exception()))

    def _refuse(self, answer: bytes, *, log: bool = True) -> None:
        self._refusal = answer
        if not self.transport.is_closing():
            if log:
                logger.warning("refused a request: %s", answer.rpartition(b"\r\n\r\n")[2].decode())
            self.transport.write(answer)
            self.transport.close()

    def _check(self, now: float) -> None:
        """Close this connection if it waited on its client past a deadline (called every CHECK_SECONDS)."""
        if self._received != self._seen:
            self._seen = self._received
            self._progress_at = now
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._received == 0:
            if now - self._progress_at >= self.bounds.idle_timeout:
                self.transport.close()  # never sent a byte: closed as an idle keep-alive connection is
            return
        if self._reading_head and self._head_bytes and (cycle is None or cycle.response_complete):
            # (A pipelined head waiting behind a request still being answered is not the client's delay.)
            self._head_since = self._head_since or now
            if now - self._head_since >= self.bounds.body_timeout:
                self._refuse(_timeout("request head", f"{self.bounds.body_timeout:g} seconds after its first byte"))
            return
        self._head_since = None
        waiting_for_body = (
            cycle is not None
            and cycle.more_body
            and not cycle.response_started
            and not cycle.disconnected
            and not self.flow.read_paused  # paused by the server: the client cannot send more
        )
        if not waiting_for_body:
            self._progress_at = now
        elif now - self._progress_at >= self.bounds.body_timeout:
            # The application is waiting in receive(): told the client is gone, and nothing it sends is written.
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(_timeout("request body", f"no byte for {self.bounds.body_timeout:g} seconds"))


def bounded_protocol(bounds: TransportBounds) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for one server: ``bounds``, and a budget of its own."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"bounds": bounds, "budget": _Budget()})


def _check_all(loop: asyncio.AbstractEventLoop, connections: Collection[object], budget: _Budget) -> None:
    """Every connection's deadlines, then again in CHECK_SECONDS (for the server's whole life)."""
    now = loop.time()
    for connection in list(connections):
        if isinstance(connection, BoundedHttpToolsProtocol):
            connection._check(now)
    if budget.refused:
        logger.warning(
            "refused %d request bodies in the last %g s: GATEWAY_MAX_BUFFERED_BYTES is held by bodies being read",
            budget.refused,
            CHECK_SECONDS,
        )
        budget.refused = 0
    loop.call_later(CHECK_SECONDS, _check_all, loop, connections, budget)


def _busy(limit: int) -> bytes:
    return _answer(
        503,
        b"Service Unavailable",
        f"The gateway holds as many request bodies as it may (GATEWAY_MAX_BUFFERED_BYTES, {limit} bytes): "
        "retry after Retry-After seconds",
        b"retry-after: %d" % BUSY_RETRY_AFTER_SECONDS,
    )


def _timeout(what: str, how: str) -> bytes:
    return _answer(408, b"Request Timeout", f"The {what} stalled: {how}")


def _invalid(error: BaseException | None) -> bytes:
    """The 400 for a request the parser refused, naming what it found wrong."""
    if isinstance(error, httptools.HttpParserError) and not isinstance(error, httptools.HttpParserCallbackError):
        reason = _REASONS.get(str(error), str(error)[:_MAX_REASON] or "malformed")
        return _answer(400, b"Bad Request", f"Invalid HTTP request: {reason}")
    return _answer(400, b"Bad Request", "Invalid HTTP request: its head could not be read")
