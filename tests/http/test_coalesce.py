"""A response's head and body leave in one send (gateway/http/coalesce.py), through the protocol
``gateway serve`` runs (uvicorn's httptools protocol with the gateway's bounds) over a transport that
records every send: a JSON answer is one send, on a keep-alive connection too; a stream's head is sent in
the pass that wrote it, before its first chunk exists; ``close`` sends what is held first, ``abort``
drops it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from gateway.http.coalesce import CoalescingTransport
from gateway.http.limits import TransportBounds, bounded_protocol


class RecordingTransport(asyncio.Transport):
    """What reached the socket: one entry a send (``write`` or ``writelines``), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.sends.append(b"".join(bytes(data) for data in list_of_data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def json_app(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"status":"ok"}'
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def connect(app: Any) -> tuple[RecordingTransport, asyncio.Protocol]:
    config = uvicorn.Config(app, log_config=None, lifespan="off")
    config.load()
    protocol = bounded_protocol(TransportBounds())(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return transport, protocol


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_json_answer_leaves_in_one_send_on_every_request_of_a_connection() -> None:
    transport, protocol = connect(json_app)
    for _ in range(2):
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
    assert len(transport.sends) == 2
    for sent in transport.sends:
        assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
        assert sent.endswith(b'\r\n\r\n{"status":"ok"}')
    protocol.connection_lost(None)


async def test_a_stream_s_head_is_sent_before_its_first_chunk_exists() -> None:
    first_chunk = asyncio.Event()

    async def stream_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await first_chunk.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    transport, protocol = connect(stream_app)
    protocol.data_received(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert len(transport.sends) == 1
    assert transport.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.sends[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    first_chunk.set()
    await settle()
    assert b"".join(transport.sends[1:]) == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"
    protocol.connection_lost(None)


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    closed = RecordingTransport()
    coalescing = CoalescingTransport(closed, loop)
    coalescing.write(b"last words")
    coalescing.close()
    assert closed.sends == [b"last words"]
    assert closed.closed

    aborted = RecordingTransport()
    coalescing = CoalescingTransport(aborted, loop)
    coalescing.write(b"never sent")
    coalescing.abort()
    await settle()
    assert aborted.sends == []
    assert aborted.aborted


@pytest.mark.parametrize("writes", [[b"a"], [b"a", b"b"], [b"a", b"b", b"c"]])
async def test_writes_of_one_pass_leave_in_order_and_whole(writes: list[bytes]) -> None:
    sink = RecordingTransport()
    coalescing = CoalescingTransport(sink, asyncio.get_running_loop())
    for data in writes:
        coalescing.write(data)
    await settle()
    assert b"".join(sink.sends) == b"".join(writes)
    assert len(sink.sends) == (len(writes) + 1) // 2
