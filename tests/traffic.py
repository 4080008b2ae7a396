"""Tools for the hardening tests: a stream of distinct webhooks over raw keep-alive connections, what the
store holds afterwards, and a TCP proxy that makes a real Redis or PostgreSQL slow or unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg

from tests.conftest import completed_image
from tests.rawhttp import IMAGE, post_webhook

__all__ = (
    "IMAGE",
    "FaultyProxy",
    "Tally",
    "host_port",
    "proxied",
    "recorded_events",
    "send_stream",
    "through",
    "webhook_body",
)


def webhook_body(job_id: str) -> bytes:
    return json.dumps(completed_image(job_id)).encode()


@dataclass
class Tally:
    """What each webhook got: a 2xx (recorded), a 503 (nothing recorded) or no answer at all (unknown)."""

    answered: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    unanswered: set[str] = field(default_factory=set)
    other: dict[str, int] = field(default_factory=dict)
    retry_after: set[str] = field(default_factory=set)
    """Values of ``Retry-After`` seen on the 503s."""
    latencies: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.answered) + len(self.refused) + len(self.unanswered) + len(self.other)


async def send_stream(
    port: int, prefix: str, *, connections: int, until: asyncio.Event, tally: Tally, pause: float = 0.0
) -> None:
    """``connections`` senders, each posting distinct webhooks (job ``<prefix>-<n>``) one after another on a
    keep-alive connection, reconnecting when it drops, until ``until`` is set and the server stops answering."""
    counter = iter(range(10**9))

    async def sender() -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        while not until.is_set():
            job_id = f"{prefix}-{next(counter)}"
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                started = time.monotonic()
                answer = await asyncio.wait_for(post_webhook(reader, writer, webhook_body(job_id)), 60)
                tally.latencies.append(time.monotonic() - started)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                tally.unanswered.add(job_id)
                if writer is not None:
                    writer.close()
                writer = reader = None
                await asyncio.sleep(0.01)
                continue
            code, headers = answer.status, answer.headers
            if 200 <= code < 300:
                tally.answered.add(job_id)
            elif code == 503:
                tally.refused.add(job_id)
                tally.retry_after.add(headers.get("retry-after", ""))
            else:
                tally.other[job_id] = code
            if headers.get("connection") == "close":
                writer.close()
                writer = reader = None
            if pause:
                await asyncio.sleep(pause)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(sender() for _ in range(connections)))


def recorded_events(database: str, prefix: str) -> dict[str, int]:
    """How many times each job of ``prefix`` has an event recorded: SQLite path or PostgreSQL URL."""
    if database.startswith("postgresql://"):
        return asyncio.run(_postgres_events(database, prefix))
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT job_id, count(*) FROM job_events WHERE job_id LIKE ? GROUP BY job_id", (f"{prefix}-%",)
        ).fetchall()
    return dict(rows)


async def _postgres_events(url: str, prefix: str) -> dict[str, int]:
    base, _, query = url.partition("?")
    schema = query.partition("search_path=")[2]
    connection = await asyncpg.connect(base, timeout=5, server_settings={"search_path": schema} if schema else None)
    try:
        rows = await connection.fetch(
            "SELECT job_id, count(*) AS n FROM job_events WHERE job_id LIKE $1 GROUP BY job_id", f"{prefix}-%"
        )
    finally:
        await connection.close()
    return {row["job_id"]: row["n"] for row in rows}


class FaultyProxy:
    """A TCP proxy on a free loopback port in front of a real server (Redis, PostgreSQL), on its own thread
    and event loop, so it serves a gateway subprocess and an in-process app alike.

    ``latency`` delays every chunk forwarded (either way); ``blackhole()`` keeps every connection open but
    drops whatever is sent either way, like a server that stopped answering or a partitioned network;
    ``drop()`` closes every connection and refuses new ones; ``heal()`` goes back to forwarding.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0
        self._blackhole = False
        self._refuse = False
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True, name="faulty-proxy")
        self._thread.start()
        started.wait(5)
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        started.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refuse:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer), return_exceptions=True
        )
        for each in (writer, upstream_writer):
            self._writers.discard(each)
            each.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            if self.latency:
                await asyncio.sleep(self.latency)
            if self._blackhole:
                continue  # lost: a partition that drops packets (a late COMMIT would blur the test)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    def blackhole(self) -> None:
        self._blackhole = True

    def drop(self) -> None:
        self._refuse = True

        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(close_all)

    def heal(self) -> None:
        self.latency = 0.0
        self._blackhole = False
        self._refuse = False

    def close(self) -> None:
        self.heal()
        self.drop()
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def proxied(host: str, port: int) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()


def host_port(url: str) -> tuple[str, int]:
    """Host and port of a ``redis://`` or ``postgresql://`` URL."""
    location = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = location.partition(":")
    return host, int(port)


def through(url: str, proxy: FaultyProxy) -> str:
    """``url`` pointing at ``proxy`` instead of its server."""
    host, port = host_port(url)
    return url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}", 1)
