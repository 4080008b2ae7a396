"""A small HTTP/1.1 client for forwarding: POST a body, read the status and headers, keep the connection.

It does only what forwarding needs: ``http`` and ``https`` (verified against the system's CA store, which
honours ``SSL_CERT_FILE``/``SSL_CERT_DIR``), straight to the endpoint (proxy variables are not read),
``Content-Length`` requests, responses delimited by ``Content-Length``, ``chunked`` or the connection's
close (bodies are read and discarded), no redirects, idle connections kept for reuse.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ("HttpClient", "Response")

_MAX_LINE = 65536
_MAX_HEADERS = 100
_MAX_DISCARDED_BODY = 1024 * 1024
"""A larger answer body is not worth reading: the connection is closed instead of kept."""
_NO_BODY = frozenset({204, 304})
_MAX_INTERIM = 10
"""Interim (1xx) answers skipped before the final one; more is not HTTP we understand."""


class Response(NamedTuple):
    status: int
    headers: Mapping[str, str]
    """Lower-case names."""


class _Connection(NamedTuple):
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class _ProtocolError(Exception):
    """The endpoint's answer is not HTTP/1.x we understand."""


class _Stale(Exception):
    """A reused connection was closed by the server before it answered anything: safe to try anew."""


class HttpClient:
    """POSTs to one URL over a pool of keep-alive connections (as many as concurrent calls)."""

    def __init__(self, url: str, *, user_agent: str) -> None:
        parts = urlsplit(url)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = self._host if ":" not in self._host else f"[{self._host}]"
        default_port = (443 if self._tls else 80) == self._port
        head = [f"POST {target} HTTP/1.1", f"host: {host if default_port else f'{host}:{self._port}'}"]
        head.append(f"user-agent: {user_agent}")
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            head.append(f"authorization: Basic {base64.b64encode(credentials).decode()}")
        self._head = "\r\n".join(head)
        self._idle: list[_Connection] = []

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Response:
        """Send ``body`` with ``headers``; raise ``OSError`` (or a subclass) when the exchange fails."""
        request = self._request(body, headers)
        while self._idle:
            connection = self._idle.pop()
            try:
                return await self._exchange(connection, request, reused=True)
            except _Stale:
                continue
        return await self._exchange(await self._connect(), request, reused=False)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.writer.close()

    def _request(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [self._head, *(f"{name}: {value}" for name, value in headers.items())]
        lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None, limit=_MAX_LINE
        )
        return _Connection(reader, writer)

    async def _exchange(self, connection: _Connection, request: bytes, *, reused: bool) -> Response:
        """One request and its final answer. A reused connection that fails before a single byte of answer
        was most likely closed by the server while idle: :class:`_Stale`, try once more on a new one. The
        request was written, so the app may in rare cases get it twice (same ``webhook-id``): delivery is
        at least once."""
        keep = False
        try:
            try:
                connection.writer.write(request)
                await connection.writer.drain()
                status_line = await connection.reader.readline()
            except ConnectionError:
                if reused:
                    raise _Stale from None
                raise
            if not status_line:
                if reused:
                    raise _Stale
                raise ConnectionResetError("the endpoint closed the connection without answering")
            try:
                response, keep = await _read_response(connection.reader, status_line)
                for _ in range(_MAX_INTERIM):  # 100 Continue, 103 Early Hints...: the answer comes after them
                    if not 100 <= response.status < 200:
                        return response
                    response, keep = await _read_response(connection.reader, await connection.reader.readline())
                raise _ProtocolError("only interim (1xx) answers")
            except (_ProtocolError, ValueError, asyncio.IncompleteReadError) as error:
                keep = False
                raise ConnectionError(f"malformed answer: {error}") from None
        finally:
            if keep:
                self._idle.append(connection)
            else:
                connection.writer.close()  # also when cancelled (timeout): the exchange is abandoned


async def _read_response(reader: asyncio.StreamReader, status_line: bytes) -> tuple[Response, bool]:
    """Read one response after its status line; answer it and whether the connection can be reused."""
    version, _, rest = status_line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
        raise _ProtocolError(f"status line {status_line[:40]!r}")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise _ProtocolError(f"header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    else:
        raise _ProtocolError("too many header lines")
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep = "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
    if status in _NO_BODY or 100 <= status < 200:
        return Response(status, headers), keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, headers), keep and await _discard_chunks(reader)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > _MAX_DISCARDED_BODY:
            return Response(status, headers), False
        await reader.readexactly(length)
        return Response(status, headers), keep
    # Delimited by the connection's close: not worth waiting for; the connection is not reused.
    return Response(status, headers), False


async def _discard_chunks(reader: asyncio.StreamReader) -> bool:
    """Read a chunked body to its end; ``False`` (stop reading, drop the connection) past the size bound."""
    read = 0
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)  # ValueError if malformed
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return True
        read += size
        if read > _MAX_DISCARDED_BODY:
            return False
        await reader.readexactly(size + 2)
