"""Bounds on a request's head (request line and headers), which the HTTP parser itself does not have.

uvicorn's httptools protocol buffers a request's head however large it is: a 10 MB header or 100 000
headers were accepted and answered 200, so one client could make the gateway hold any amount of memory
before a single check ran. This protocol counts the bytes of each head as they arrive and its headers as
they are parsed, and past a bound answers ``431 Request Header Fields Too Large`` and closes the
connection, before the application sees anything. (h11, uvicorn's other parser, has a 16 KiB bound
of its own; the gateway runs httptools.)
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ("MAX_HEADERS", "MAX_HEAD_BYTES", "BoundedHttpToolsProtocol")

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
"""Most bytes of a request line and headers together (nginx allows 32 KiB by default, Node 16 KiB)."""
MAX_HEADERS = 100
"""Most header fields in one request (Apache's LimitRequestFields default)."""

_REFUSAL = msgspec.json.encode(
    {
        "status_code": 431,
        "detail": f"Request headers too large: at most {MAX_HEADERS} fields and {MAX_HEAD_BYTES} bytes",
    }
)
_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_REFUSAL)).encode() + b"\r\nconnection: close\r\n\r\n" + _REFUSAL
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the parser stops, and uvicorn calls ``send_400_response``."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :data:`MAX_HEAD_BYTES` and :data:`MAX_HEADERS` enforced."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._reading_head = True
        self._head_too_large = False
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still incomplete past the bound (one endless header, say) is refused here, so at most one
        # chunk over the bound is ever buffered; a complete head is measured exactly in on_headers_complete.
        if self._reading_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()

    def on_message_begin(self) -> None:
        self._head_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if len(self.headers) >= MAX_HEADERS:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if self._head_size > MAX_HEAD_BYTES:  # a head that arrived whole in the chunk crossing the bound
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._refuse()
            return
        super().send_400_response(msg)

    def _refuse(self) -> None:
        logger.warning("refused a request whose head is over %d bytes or %d headers", MAX_HEAD_BYTES, MAX_HEADERS)
        self._head_too_large = True
        if not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()
