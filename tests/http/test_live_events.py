"""Live progress over SSE against real servers: history then live, resume without gaps or repeats, a user's
stream, a slow client cut off with bounded memory, the stream cap, shutdown, and two replicas on Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.http.events import Streams
from gateway.model import JobEvent, Status
from gateway.wakeup import Wakeup
from tests.backends import sqlite_job_store
from tests.conftest import SECRET, LiveServer, RedisServer, completed_image, failed, progress
from tests.rawhttp import read_head

IMAGE = "/api/webhooks/image-completion"
HEADERS = {"X-Webhook-Secret": SECRET}


class Message(dict[str, str]):
    """One SSE message: its fields (``id``, ``event``, ``data``), or ``comment`` for a comment line."""

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self["data"]))


def messages(lines: Iterator[str]) -> Iterator[Message]:
    """Parse SSE lines (blank line ends a message); ``retry:`` lines are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                yield Message(fields)
            fields = {}
        elif line.startswith(":"):
            yield Message(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            if name != "retry":
                fields[name] = value.removeprefix(" ")
    if fields:
        yield Message(fields)


def events(lines: Iterator[str]) -> Iterator[Message]:
    """Only the job events (heartbeats and control events left out)."""
    return (m for m in messages(lines) if "comment" not in m and "event" not in m)


def post(server: LiveServer, payload: dict[str, Any], client: httpx.Client | None = None) -> None:
    response = (client or httpx).post(f"{server.url}{IMAGE}", json=payload, headers=HEADERS)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text


def start(tmp_path: Path, stopping: list[LiveServer], name: str = "a", **env: str) -> LiveServer:
    directory = tmp_path / name
    directory.mkdir()
    server = LiveServer(directory, {"WEBHOOK_SECRET": SECRET, **env})
    stopping.append(server)
    return server


def test_a_job_stream_sends_its_history_then_live_events_then_ends(tmp_path: Path, stopping: list[LiveServer]) -> None:
    server = start(tmp_path, stopping)
    post(server, progress("initializing", job_id="j1", timestamp="2025-10-21T16:40:00Z"))
    post(server, progress("generating", job_id="j1", timestamp="2025-10-21T16:41:00Z"))
    with httpx.stream("GET", f"{server.url}/api/jobs/j1/events", timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = messages(response.iter_lines())
        history = [next(m for m in stream if "id" in m) for _ in range(2)]
        assert [m.payload["status"] for m in history] == ["initializing", "generating"]
        first = history[0].payload
        assert {"job_id", "kind", "status", "outcome", "timestamp", "received_at"} <= set(first)
        assert (first["job_id"], first["kind"], first["outcome"]) == ("j1", "image", "applied")
        assert first["timestamp"] == "2025-10-21T16:40:00Z"
        assert int(history[0]["id"]) < int(history[1]["id"])

        post(server, completed_image(job_id="j1"))  # live, while the stream is open
        live = next(m for m in stream if "id" in m)
        assert live.payload["status"] == "completed"
        assert next(stream)["event"] == "end"
        assert list(stream) == []  # the server closed the stream after the terminal status
    # Reconnecting after the end (as an EventSource would) is a 204: stop reconnecting.
    again = httpx.get(f"{server.url}/api/jobs/j1/events", headers={"Last-Event-ID": live["id"]}, timeout=5)
    assert again.status_code == 204
    assert httpx.get(f"{server.url}/api/jobs/nope/events", timeout=5).status_code == 404


def test_resume_with_last_event_id_misses_and_repeats_nothing(tmp_path: Path, stopping: list[LiveServer]) -> None:
    server = start(tmp_path, stopping)
    received: list[Message] = []
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", f"{server.url}/api/jobs/events") as response:
            stream = events(response.iter_lines())
            for number in range(10):
                post(server, progress("generating", job_id=f"r-{number}"), client)
            received += [next(stream) for _ in range(6)]
        # Disconnected: these happen while no stream is open.
        for number in range(10, 25):
            post(server, progress("generating", job_id=f"r-{number}"), client)
        resume = {"Last-Event-ID": received[-1]["id"]}
        with client.stream("GET", f"{server.url}/api/jobs/events", headers=resume) as response:
            stream = events(response.iter_lines())
            received += [next(stream) for _ in range(19)]
            post(server, failed(job_id="r-0"), client)
            received.append(next(stream))
    ids = [int(m["id"]) for m in received]
    assert ids == sorted(set(ids))  # increasing: nothing repeated
    assert [m.payload["job_id"] for m in received[:25]] == [f"r-{n}" for n in range(25)]  # nothing missed
    assert received[-1].payload["status"] == "failed"
    # ?after= does the same for clients that cannot set headers.
    with httpx.stream("GET", f"{server.url}/api/jobs/events", params={"after": ids[19]}, timeout=10) as response:
        stream = events(response.iter_lines())
        assert [int(next(stream)["id"]) for _ in range(6)] == ids[20:]


def test_a_users_stream_carries_only_that_users_jobs(tmp_path: Path, stopping: list[LiveServer]) -> None:
    server = start(tmp_path, stopping)
    for job_id, user in (("mine-1", "alice"), ("theirs-1", "bob"), ("mine-2", "alice")):
        body = {"job_id": job_id, "kind": "image", "user_id": user}
        assert httpx.post(f"{server.url}/api/jobs", json=body).status_code == 201
    with httpx.stream("GET", f"{server.url}/api/jobs/events", params={"user_id": "alice"}, timeout=10) as response:
        stream = events(response.iter_lines())
        for job_id in ("theirs-1", "mine-1", "theirs-1", "mine-2"):
            post(server, progress("generating", job_id=job_id, timestamp=f"2025-10-21T16:4{len(job_id)}:00Z"))
        got = [next(stream).payload for _ in range(2)]
    assert [(e["job_id"], e["user_id"]) for e in got] == [("mine-1", "alice"), ("mine-2", "alice")]


async def test_a_slow_client_is_cut_off_with_a_resume_point_and_memory_stays_flat(tmp_path: Path) -> None:
    """A client that stops reading (here: a stream nobody pulls from, over a real SQLite store) holds at most
    its buffer; after a heartbeat with the buffer full it gets ``event: overflow`` naming where to resume.

    In-process on purpose: over a real socket the kernel's buffers (megabytes on loopback) absorb tens of
    thousands of events before the server ever sees a slow reader, which makes a test of minutes.
    """
    jobs = sqlite_job_store(tmp_path / "slow.db")
    await jobs.open()
    wakeup = Wakeup()
    streams = Streams(jobs, wakeup, max_streams=10, heartbeat=0.2, buffer=16)
    received_at = datetime.now(UTC)

    async def store(number: int) -> None:
        event = JobEvent(
            kind="image", job_id=f"s-{number}", status=Status.GENERATING, timestamp=received_at, received_at=received_at
        )
        await jobs.apply(event)
        wakeup.stored()

    try:
        stream = streams.take(0, job_id=None, user_id=None)
        assert stream is not None
        assert (await anext(stream)).startswith(b"retry:")
        assert streams.open == 1
        for number in range(200):  # warm up, then measure while the client reads nothing
            await store(number)
        await asyncio.sleep(0.1)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for number in range(200, 2200):
            await store(number)
        await asyncio.sleep(0.5)  # the buffer stays full for longer than a heartbeat: the client is dropped
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        got = list(messages(iter(b"".join([chunk async for chunk in stream]).decode().split("\n"))))
        rest = await jobs.events_after(16, 5)  # where the overflow below says to resume
    finally:
        await jobs.close()
    data = [m for m in got if "id" in m and "event" not in m]
    overflow = got[-1]
    assert overflow.get("event") == "overflow", got[-3:]
    assert len(data) == 16  # the buffer, and not one event more, was held for it
    assert [int(m["id"]) for m in data] == list(range(1, len(data) + 1))  # nothing missing before the cut
    assert int(overflow["id"]) == overflow.payload["resume_after"] == int(data[-1]["id"])
    # 2000 events of about 300 bytes each were stored while it read nothing: none of them is held for it.
    assert grown < 150_000, f"{grown} bytes more while the client was stalled"
    assert streams.open == 0
    # Resuming from the overflow's id (what an EventSource does by itself) picks up right after the cut.
    assert rest[0].id == int(overflow["id"]) + 1


def test_a_burst_of_300_streams_opens_exactly_the_cap_of_100(tmp_path: Path, stopping: list[LiveServer]) -> None:
    """The cap held under a real burst: 300 connections ask at once, 100 streams open, 200 get 503."""
    server = start(tmp_path, stopping, GATEWAY_SSE_MAX_STREAMS="100")
    request = b"GET /api/jobs/events HTTP/1.1\r\nHost: x\r\n\r\n"
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(300)]
    try:
        for sock in sockets:  # every request is sent before any answer is read
            sock.sendall(request)
        heads = [read_head(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    statuses = [head.split(b" ", 2)[1] for head in heads]
    assert statuses.count(b"200") == 100, statuses.count(b"200")
    assert statuses.count(b"503") == 200
    assert all(b"retry-after: 5" in head.lower() for head in heads if b" 503 " in head.split(b"\r\n")[0])


async def test_a_stream_dropped_before_its_first_byte_gives_its_slot_back(tmp_path: Path) -> None:
    jobs = sqlite_job_store(tmp_path / "drop.db")
    streams = Streams(jobs, Wakeup(), max_streams=1, heartbeat=5, buffer=4)
    first = streams.take(0, job_id=None, user_id=None)
    assert first is not None
    assert streams.take(0, job_id=None, user_id=None) is None  # the slot was taken at once, not at the first byte
    del first  # never started: a client gone before the response began
    gc.collect()
    assert streams.open == 0
    assert streams.take(0, job_id=None, user_id=None) is not None


def test_streams_beyond_the_cap_are_503(tmp_path: Path, stopping: list[LiveServer]) -> None:
    server = start(tmp_path, stopping, GATEWAY_SSE_MAX_STREAMS="2")
    with (
        httpx.stream("GET", f"{server.url}/api/jobs/events", timeout=10) as one,
        httpx.stream("GET", f"{server.url}/api/jobs/events", timeout=10) as two,
    ):
        lines = [one.iter_lines(), two.iter_lines()]  # kept: a dropped iterator closes its connection
        assert [next(stream) for stream in lines] == ["retry: 2000", "retry: 2000"]
        third = httpx.get(f"{server.url}/api/jobs/events", timeout=5)
        assert third.status_code == 503
        assert "GATEWAY_SSE_MAX_STREAMS" in third.json()["detail"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # closed streams give their slots back
        with httpx.stream("GET", f"{server.url}/api/jobs/events", timeout=10) as response:
            if response.status_code == 200:
                break
        time.sleep(0.1)
    else:
        pytest.fail("the slots of closed streams were not given back")


def test_open_streams_do_not_hold_up_a_graceful_shutdown(tmp_path: Path, stopping: list[LiveServer]) -> None:
    server = start(tmp_path, stopping)
    post(server, progress("generating", job_id="j1"))
    with (
        httpx.stream("GET", f"{server.url}/api/jobs/events", timeout=10) as every,
        httpx.stream("GET", f"{server.url}/api/jobs/j1/events", timeout=10) as one,
    ):
        lines = [every.iter_lines(), one.iter_lines()]  # kept: a dropped iterator closes its connection
        assert [next(stream) for stream in lines] == ["retry: 2000", "retry: 2000"]
        started = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down; `gateway serve` turns that into a clean exit.
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        for stream in lines:  # both ended by the server: complete responses (a cut one raises here)
            list(stream)


def test_a_webhook_into_one_replica_shows_on_a_stream_from_the_other(
    tmp_path: Path, stopping: list[LiveServer], database_url: str, redis_url: str, redis_prefix: str
) -> None:
    # A long heartbeat: the event can only arrive this fast through the Redis signal, not a periodic read.
    shared = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
        "GATEWAY_SSE_HEARTBEAT_SECONDS": "30",
    }
    first = start(tmp_path, stopping, "a", **shared)
    second = start(tmp_path, stopping, "b", **shared)
    with httpx.stream("GET", f"{second.url}/api/jobs/events", timeout=10) as response:
        stream = events(response.iter_lines())
        time.sleep(0.3)  # the stream is open and waiting
        for number in range(3):
            started = time.monotonic()
            post(first, progress("generating", job_id=f"x-{number}"))
            event = next(stream)
            assert event.payload["job_id"] == f"x-{number}"
            assert time.monotonic() - started < 5


async def test_a_finished_jobs_long_history_is_sent_whole_then_the_stream_ends(tmp_path: Path) -> None:
    """More events than one read (100), the terminal one among them and stale ones after it: all are sent."""
    jobs = sqlite_job_store(tmp_path / "long.db")
    await jobs.open()
    start = datetime(2025, 10, 21, 16, 0, tzinfo=UTC)

    def event(status: Status, second: int) -> JobEvent:
        moment = start + timedelta(seconds=second)
        return JobEvent(kind="image", job_id="long", status=status, timestamp=moment, received_at=moment)

    try:
        for second in range(60):
            await jobs.apply(event(Status.GENERATING, second))
        await jobs.apply(event(Status.COMPLETED, 60))
        for second in range(61, 140):  # late progress reports: recorded as stale, after the terminal one
            await jobs.apply(event(Status.SAVING, second))
        streams = Streams(jobs, Wakeup(), max_streams=1, heartbeat=5, buffer=32)
        stream = streams.take(0, job_id="long", user_id=None)
        assert stream is not None
        async with asyncio.timeout(5):
            text = b"".join([chunk async for chunk in stream]).decode()
    finally:
        await jobs.close()
    got = list(messages(iter(text.split("\n"))))
    assert [int(m["id"]) for m in got if "id" in m] == list(range(1, 141))
    assert got[-1]["event"] == "end"


def test_replicas_hear_each_other_again_after_redis_restarts(
    tmp_path: Path, stopping: list[LiveServer], database_url: str, redis_server: RedisServer
) -> None:
    """The signal's subscription survives a Redis restart: a heartbeat of 30 s, yet the event arrives at once."""
    shared = {"DATABASE_URL": database_url, "REDIS_URL": redis_server.url, "GATEWAY_SSE_HEARTBEAT_SECONDS": "30"}
    first = start(tmp_path, stopping, "a", **shared)
    second = start(tmp_path, stopping, "b", **shared)
    with httpx.stream("GET", f"{second.url}/api/jobs/events", timeout=10) as response:
        stream = events(response.iter_lines())
        redis_server.stop()
        time.sleep(0.5)
        redis_server.start()
        time.sleep(2)  # the replicas resubscribe (one attempt a second)
        started = time.monotonic()
        post(first, progress("generating", job_id="after-restart"))
        assert next(stream).payload["job_id"] == "after-restart"
        assert time.monotonic() - started < 5


async def test_a_burst_of_commits_is_a_handful_of_signals_and_the_last_one_is_heard(
    redis_url: str, redis_prefix: str
) -> None:
    """Replicas ring each other once per 20 ms at most: 300 commits, about a millisecond apart, are one
    PUBLISH per 20 ms of the burst, not 300, and a commit after the burst still reaches the other replica."""
    import redis.asyncio as redis

    sender, listener = Wakeup(redis_url, prefix=redis_prefix), redis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(f"{redis_prefix}job-events")
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    await sender.start()
    try:
        started = time.monotonic()
        for _ in range(300):
            sender.stored()
            await asyncio.sleep(0.0005)
        burst = time.monotonic() - started
        await asyncio.sleep(0.1)
        signals = 0
        while await pubsub.get_message(timeout=0.2) is not None:
            signals += 1
        assert 1 <= signals <= burst / 0.02 + 3 < 100
        sender.stored()
        assert await pubsub.get_message(timeout=1) is not None, "a commit after the burst was not signalled"
    finally:
        await sender.stop()
        await pubsub.aclose()
        await listener.aclose()


async def test_stopping_the_wakeup_ends_its_redis_loops_whenever_it_comes(redis_url: str, redis_prefix: str) -> None:
    """Shutdown ends the Redis listener however soon after start-up it comes, the subscription's
    confirmation still in flight included (where redis-py may lose a cancellation): no loop is left
    running, and nothing stays subscribed, so a closing app is not held up by its wake-up."""
    import redis.asyncio as redis

    channel = f"{redis_prefix}job-events"
    admin = redis.Redis.from_url(redis_url)
    try:
        for attempt in range(40):
            wakeup = Wakeup(redis_url, prefix=redis_prefix)
            await wakeup.start()
            await asyncio.sleep(0.001 * (attempt % 20))  # from before the subscription to well after it
            await wakeup.stop()
            running = [task for task in asyncio.all_tasks() if "Wakeup." in repr(task.get_coro())]
            assert not running, f"attempt {attempt}: {running}"
            assert await admin.pubsub_numsub(channel) == [(channel.encode(), 0)]
    finally:
        await admin.aclose()
