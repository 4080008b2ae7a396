"""The NATS JetStream sink against a real nats-server: each event stored once, whatever is re-published.

Every test publishes under a subject prefix and into a stream of its own (deleted afterwards), so parallel
runs sharing one NATS never see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

from gateway.delivery.jetstream import DUPLICATE_WINDOW_SECONDS, JetStreamSink, subject_token
from gateway.delivery.sink import Dead, Delivered, Delivery, Retry
from tests.conftest import SECRET, LiveServer, _unavailable, completed_image, free_port, progress

pytestmark = pytest.mark.timeout(60)

IMAGE = "/api/webhooks/image-completion"


class Namespace(msgspec.Struct, frozen=True, kw_only=True):
    """A test's own subject prefix and stream name."""

    prefix: str
    stream: str


@pytest.fixture
async def namespace(nats_url: str) -> AsyncIterator[Namespace]:
    tag = uuid.uuid4().hex[:12]
    space = Namespace(prefix=f"test_{tag}.jobs", stream=f"TEST_{tag}")
    yield space
    client = await nats.connect(nats_url, connect_timeout=1, allow_reconnect=False)
    try:
        jetstream = client.jetstream(timeout=2)
        for name in (space.stream, f"OPS_{space.stream}"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await jetstream.delete_stream(name)
    finally:
        await client.close()


def delivery(number: int, *, kind: str = "image", status: str = "completed", attempt: int = 1) -> Delivery:
    body = msgspec.json.encode({"event_id": f"evt_{number}", "job_id": f"job-{number}", "status": status})
    return Delivery(
        id=number,
        event_id=f"evt_{number}",
        sequence=number,
        job_id=f"job-{number}",
        kind=kind,
        status=status,
        body=body,
        attempt=attempt,
        traceparent=f"00-{number:032x}-{number:016x}-01",
    )


async def stored(url: str, stream: str, prefix: str) -> list[Msg]:
    """Every message of ``stream`` under ``prefix``, read by a fresh consumer from the start."""
    client = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
    try:
        jetstream = client.jetstream(timeout=2)
        info = await jetstream.stream_info(stream)
        count = info.state.messages
        subscription = await jetstream.pull_subscribe(
            f"{prefix}.>", stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        messages: list[Msg] = []
        while len(messages) < count:
            messages += await subscription.fetch(count - len(messages), timeout=2)
        for message in messages:
            await message.ack()
        await subscription.unsubscribe()
        return messages
    finally:
        await client.close()


def test_subject_tokens_never_split_or_wildcard() -> None:
    assert subject_token("image") == "image"
    assert subject_token("in-progress_2") == "in-progress_2"
    assert subject_token("a.b") == "a_b"
    assert subject_token("*") == "_"
    assert subject_token(">") == "_"
    assert subject_token("two words\t") == "two_words_"
    assert subject_token("") == "_"


async def test_each_event_is_stored_once_however_often_it_is_published(nats_url: str, namespace: Namespace) -> None:
    sink = JetStreamSink(nats_url, subject_prefix=namespace.prefix, stream=namespace.stream)
    try:
        first, second, third = delivery(1), delivery(2, kind="blog", status="generating"), delivery(3, status="failed")
        for item in (first, second, third):
            assert await sink.send(item) == Delivered()
        # A retry after a lost ack, and a replay of the same event later: both acknowledged, neither stored.
        assert await sink.send(delivery(1, attempt=2)) == Delivered()
        assert await sink.send(first) == Delivered()
        assert await sink.send(delivery(2, kind="blog", status="generating", attempt=5)) == Delivered()
    finally:
        await sink.close()

    messages = await stored(nats_url, namespace.stream, namespace.prefix)
    assert [(m.subject, m.headers and m.headers["Nats-Msg-Id"]) for m in messages] == [
        (f"{namespace.prefix}.image.completed", "evt_1"),
        (f"{namespace.prefix}.blog.generating", "evt_2"),
        (f"{namespace.prefix}.image.failed", "evt_3"),
    ]
    assert [m.data for m in messages] == [first.body, second.body, third.body]
    assert messages[0].headers is not None
    assert messages[0].headers["traceparent"] == first.traceparent
    assert messages[0].headers["Content-Type"] == "application/json"


async def test_the_stream_it_creates_covers_the_subjects_with_a_duplicate_window(
    nats_url: str, namespace: Namespace
) -> None:
    sink = JetStreamSink(nats_url, subject_prefix=namespace.prefix, stream=namespace.stream)
    try:
        assert await sink.send(delivery(1, kind="odd.kind", status="*")) == Delivered()
    finally:
        await sink.close()
    client = await nats.connect(nats_url, connect_timeout=1, allow_reconnect=False)
    try:
        info = await client.jetstream(timeout=2).stream_info(namespace.stream)
    finally:
        await client.close()
    assert info.config.subjects == [f"{namespace.prefix}.>"]
    assert info.config.duplicate_window == DUPLICATE_WINDOW_SECONDS
    [message] = await stored(nats_url, namespace.stream, namespace.prefix)
    assert message.subject == f"{namespace.prefix}.odd_kind._"


async def test_a_stream_the_operator_created_is_used_as_it_is(nats_url: str, namespace: Namespace) -> None:
    operators = f"OPS_{namespace.stream}"
    client = await nats.connect(nats_url, connect_timeout=1, allow_reconnect=False)
    try:
        await client.jetstream(timeout=2).add_stream(
            StreamConfig(name=operators, subjects=[f"{namespace.prefix}.>"], duplicate_window=600)
        )
    finally:
        await client.close()
    sink = JetStreamSink(nats_url, subject_prefix=namespace.prefix, stream=namespace.stream)
    try:
        assert await sink.send(delivery(1)) == Delivered()
        assert await sink.send(delivery(1, attempt=2)) == Delivered()
    finally:
        await sink.close()
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in await stored(nats_url, operators, namespace.prefix)] == [
        "evt_1"
    ]


async def test_a_deleted_stream_is_a_retry_and_is_created_again(nats_url: str, namespace: Namespace) -> None:
    sink = JetStreamSink(nats_url, subject_prefix=namespace.prefix, stream=namespace.stream)
    try:
        assert await sink.send(delivery(1)) == Delivered()
        client = await nats.connect(nats_url, connect_timeout=1, allow_reconnect=False)
        try:
            await client.jetstream(timeout=2).delete_stream(namespace.stream)
        finally:
            await client.close()
        answer = await sink.send(delivery(2))
        assert isinstance(answer, Retry)
        assert "no JetStream stream" in answer.reason
        assert await sink.send(delivery(2, attempt=2)) == Delivered()
    finally:
        await sink.close()
    assert [
        m.headers and m.headers["Nats-Msg-Id"] for m in await stored(nats_url, namespace.stream, namespace.prefix)
    ] == ["evt_2"]


async def test_an_event_over_the_servers_max_payload_is_dead(nats_url: str, namespace: Namespace) -> None:
    sink = JetStreamSink(nats_url, subject_prefix=namespace.prefix, stream=namespace.stream)
    try:
        assert await sink.send(delivery(1)) == Delivered()
        huge = msgspec.structs.replace(delivery(2), body=b"x" * (8 * 1024 * 1024))
        answer = await sink.send(huge)
        assert isinstance(answer, Dead)
        assert "max_payload" in answer.reason
    finally:
        await sink.close()


class NatsServer:
    """A private ``nats-server`` with JetStream on a free port, for tests that stop it or restrict it: the
    shared one is never stopped. ``publish`` (subjects user ``gw`` may publish to) turns on authorization."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            _unavailable("nats-server is not installed (apt-get install nats-server)")
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.publish: list[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        config = self.directory / "nats.conf"
        lines = [f'listen: "127.0.0.1:{self.port}"', f'jetstream {{ store_dir: "{self.directory / "store"}" }}']
        if self.publish is not None:
            allowed = ", ".join(f'"{subject}"' for subject in self.publish)
            lines.append(
                "authorization { users = [ {user: gw, password: pw, permissions: "
                f'{{publish: {{allow: [{allowed}]}}, subscribe: {{allow: ["_INBOX.>"]}}}}}} ] }}'
            )
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self._write_config())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    if conn.recv(4) == b"INFO":
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not answer on port {self.port}")

    def allow(self, publish: list[str]) -> None:
        """Change user ``gw``'s publish permissions, as an operator would: new config, then a reload."""
        self.publish = publish
        self._write_config()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    yield server
    server.stop()


async def test_nats_down_is_a_retry_and_the_event_is_delivered_once_it_is_back(nats_server: NatsServer) -> None:
    sink = JetStreamSink(nats_server.url, subject_prefix="gw.jobs", stream="GW", timeout=1)
    try:
        # Never reached: the first connection fails within the timeout.
        started = time.monotonic()
        answer = await sink.send(delivery(1))
        assert isinstance(answer, Retry), answer
        assert time.monotonic() - started < 3
        nats_server.start()
        assert await sink.send(delivery(1, attempt=2)) == Delivered()
        # Lost while connected: the client reconnects in the background; meanwhile sends are retried.
        nats_server.stop()
        assert isinstance(await sink.send(delivery(2)), Retry)
        nats_server.start()
        deadline = time.monotonic() + 15
        answer = await sink.send(delivery(2, attempt=2))
        while answer != Delivered() and time.monotonic() < deadline:
            answer = await sink.send(delivery(2, attempt=3))
        assert answer == Delivered()
        assert await sink.send(delivery(1, attempt=3)) == Delivered()
    finally:
        await sink.close()
    messages = await stored(nats_server.url, "GW", "gw.jobs")
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == ["evt_1", "evt_2"]


async def test_a_publish_the_account_may_not_make_is_retried_until_it_is_allowed(nats_server: NatsServer) -> None:
    """NATS drops a publish outside the account's permissions (and tells only the client's error
    callback): the ack never comes, so it is a Retry, and it goes through once an operator allows it."""
    nats_server.publish = ["$JS.API.>", "_INBOX.>"]  # may manage streams, may not publish events
    nats_server.start()
    url = nats_server.url.replace("nats://", "nats://gw:pw@")
    sink = JetStreamSink(url, subject_prefix="gw.jobs", stream="GW", timeout=1)
    try:
        answer = await sink.send(delivery(1))
        assert answer == Retry("no JetStream ack within 1 s")
        nats_server.allow(["$JS.API.>", "_INBOX.>", "gw.jobs.>"])
        deadline = time.monotonic() + 10
        while (answer := await sink.send(delivery(1, attempt=2))) != Delivered() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert answer == Delivered()
    finally:
        await sink.close()
    assert len(await stored(url, "GW", "gw.jobs")) == 1


def publishing_env(nats_url: str, namespace: Namespace) -> dict[str, str]:
    """A live gateway publishing to the test's own subjects and stream."""
    return {
        "WEBHOOK_SECRET": SECRET,
        "GATEWAY_NATS_URL": nats_url,
        "GATEWAY_NATS_SUBJECT_PREFIX": namespace.prefix,
        "GATEWAY_NATS_STREAM": namespace.stream,
    }


async def test_a_live_gateway_publishes_each_applied_event_once(
    nats_url: str, namespace: Namespace, tmp_path: Path
) -> None:
    """Webhooks (with duplicates and stale ones) to a gateway with GATEWAY_NATS_URL, then a replay of every
    delivered event: the stream holds each applied event once, in order per job."""
    server = await asyncio.to_thread(LiveServer, tmp_path, publishing_env(nats_url, namespace))
    try:
        async with httpx.AsyncClient(base_url=server.url, headers={"X-Webhook-Secret": SECRET}) as http:
            applied: list[tuple[str, str]] = []
            for number in range(8):
                job_id = f"nats-{number}"
                for status, timestamp in (("pending", "16:40"), ("generating", "16:42"), ("completed", "16:45")):
                    payload = (
                        completed_image(job_id=job_id)
                        if status == "completed"
                        else progress(status, job_id=job_id, timestamp=f"2025-10-21T{timestamp}:00Z")
                    )
                    answer = (await http.post(IMAGE, json=payload)).json()
                    assert answer["outcome"] == "applied", answer
                    applied.append((job_id, status))
                    # A retried webhook: answered 200, never published.
                    assert (await http.post(IMAGE, json=payload)).json()["outcome"] == "duplicate"
                stale = progress("saving", job_id=job_id, timestamp="2025-10-21T16:50:00Z")
                assert (await http.post(IMAGE, json=stale)).json()["outcome"] == "stale"
            await _until_nothing_pending(http)
            # The gateway publishes every event again (an operator's replay): JetStream drops each copy.
            replayed = (await http.post("/api/deliveries/replay", params={"state": "delivered"})).json()
            assert replayed == {"replayed": len(applied)}
            await _until_nothing_pending(http)
            # Each event was published twice, and JetStream acknowledged both.
            metrics = (await http.get("/metrics")).text
            assert f'gateway_deliveries_total{{result="delivered",sink="nats"}} {2 * len(applied)}.0' in metrics
    finally:
        server.stop()

    messages = await stored(nats_url, namespace.stream, namespace.prefix)
    events = [msgspec.json.decode(message.data) for message in messages]
    assert sorted((event["job_id"], event["status"]) for event in events) == sorted(applied)
    ids = [message.headers and message.headers["Nats-Msg-Id"] for message in messages]
    assert ids == [event["event_id"] for event in events]
    assert len(set(ids)) == len(ids)
    assert [m.subject for m in messages] == [f"{namespace.prefix}.image.{event['status']}" for event in events]
    for number in range(8):
        statuses = [event["status"] for event in events if event["job_id"] == f"nats-{number}"]
        assert statuses == ["pending", "generating", "completed"]


async def test_a_gateway_killed_while_publishing_publishes_each_event_once_after_a_restart(
    nats_url: str, namespace: Namespace, tmp_path: Path
) -> None:
    """SIGKILL while the dispatcher works through a backlog: a row published but not yet recorded as
    delivered is published again after the restart, and JetStream keeps only the first copy."""
    env = publishing_env(nats_url, namespace)
    server = await asyncio.to_thread(LiveServer, tmp_path, env)
    jobs = [f"kill-{number}" for number in range(100)]
    try:
        async with httpx.AsyncClient(base_url=server.url, headers={"X-Webhook-Secret": SECRET}) as http:

            async def post(job_id: str) -> None:
                answer = await http.post(IMAGE, json=progress("pending", job_id=job_id))
                assert answer.json()["outcome"] == "applied"

            for start in range(0, len(jobs), 50):
                await asyncio.gather(*(post(job_id) for job_id in jobs[start : start + 50]))
        os.kill(server.process.pid, signal.SIGKILL)
        await asyncio.to_thread(server.process.wait, 10)
    finally:
        if server.process.poll() is None:
            server.stop()
    published_before = len(await stored(nats_url, namespace.stream, namespace.prefix))
    with contextlib.closing(sqlite3.connect(tmp_path / "live.db")) as database:
        [(pending,)] = database.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchall()
    restarted = await asyncio.to_thread(LiveServer, tmp_path, env)
    try:
        async with httpx.AsyncClient(base_url=restarted.url) as http:
            await _until_nothing_pending(http)
    finally:
        restarted.stop()
    messages = await stored(nats_url, namespace.stream, namespace.prefix)
    assert sorted(msgspec.json.decode(message.data)["job_id"] for message in messages) == sorted(jobs)
    print(f"\nkilled with {published_before} of {len(jobs)} events in the stream and {pending} rows pending")


async def _until_nothing_pending(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page = (await http.get("/api/deliveries", params={"state": "pending"})).json()
        if not page["deliveries"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries still pending after 20 s: {page}")
