"""The tests' one raw HTTP/1.1 client, for what an HTTP library would hide or cost: exact bytes on the
wire (malformed or partial requests), thousands of webhooks on keep-alive connections without a client
library's CPU, a request left unfinished on purpose.

Nothing here half-closes a connection: uvicorn drops a connection whose peer sent EOF, which would race
the answer. A request that should be answered and then closed asks for ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from tests.conftest import SECRET

__all__ = ("IMAGE", "Answer", "exchange", "post_webhook", "read_answer", "read_head", "webhook_request")

IMAGE = "/api/webhooks/image-completion"


def webhook_request(body: bytes, *, path: str = IMAGE, secret: str = SECRET) -> bytes:
    """A whole webhook ``POST`` of ``body`` (JSON) to ``path`` with the shared secret: head and body."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Webhook-Secret: {secret}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    """By lower-cased name; a repeated header keeps its last value."""
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The next answer on a keep-alive connection (its body framed by ``Content-Length``).

    Raises ``ConnectionResetError`` when the server closed before answering, and
    ``asyncio.IncompleteReadError`` when it closed in the middle of the answer."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed before answering")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


async def post_webhook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> Answer:
    """``POST`` one webhook (:func:`webhook_request`) on an open connection and read its answer."""
    writer.write(webhook_request(body))
    return await read_answer(reader)


def exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float = 2, stall: bool = False) -> bytes:
    """Send ``head`` and ``body`` (raw bytes) to ``127.0.0.1:port`` and read everything until the server
    closes (``timeout`` bounds each wait). ``stall`` says the request is left unfinished on purpose: the
    server is expected to give up on it."""
    del stall
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def read_head(sock: socket.socket) -> bytes:
    """Read from ``sock`` until an answer's head is complete (or the server closes): the bytes read."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head
