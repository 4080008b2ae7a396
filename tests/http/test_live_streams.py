"""The live-stream hub below HTTP (:class:`gateway.http.events.Streams` over each job store backend, with the
in-process wake-up): what a stream sends, in which order, when it ends, and the cap on open streams. The
same through ``gateway serve`` and across replicas is test_live_events.py."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from gateway.http.events import Streams
from gateway.model import JobEvent, Status
from gateway.registration import Registration
from gateway.stores.base import JobStore
from gateway.wakeup import Wakeup

T0 = datetime(2025, 10, 21, 16, 40, tzinfo=UTC)


def event(job_id: str, status: Status, minute: int) -> JobEvent:
    return JobEvent(
        kind="image",
        job_id=job_id,
        status=status,
        timestamp=T0 + timedelta(minutes=minute),
        received_at=datetime.now(UTC),
    )


async def next_message(stream: AsyncIterator[bytes]) -> bytes:
    """The stream's next message, or a failure if it says nothing for 5 s (far beyond a heartbeat here)."""
    return await asyncio.wait_for(anext(stream), 5)


def data(message: bytes) -> dict[str, object]:
    lines = dict(line.split(": ", 1) for line in message.decode().strip().split("\n"))
    decoded: dict[str, object] = msgspec.json.decode(lines["data"])
    return decoded | {"sse_id": int(lines["id"])}


@pytest.fixture
async def wakeup() -> AsyncIterator[Wakeup]:
    bell = Wakeup()
    yield bell
    await bell.stop()


async def test_a_job_stream_sends_its_history_then_live_events_then_ends_at_a_terminal_status(
    job_store: JobStore, wakeup: Wakeup
) -> None:
    streams = Streams(job_store, wakeup, max_streams=4, heartbeat=10, buffer=16)
    for minute, status in enumerate((Status.PENDING, Status.GENERATING)):
        await job_store.apply(event("followed", status, minute))
    await job_store.apply(event("other", Status.PENDING, 0))
    stream = streams.take(0, job_id="followed", user_id=None)
    assert stream is not None
    assert await next_message(stream) == b"retry: 2000\n\n"
    history = [data(await next_message(stream)) for _ in range(2)]
    assert [(m["job_id"], m["status"]) for m in history] == [("followed", "pending"), ("followed", "generating")]
    assert history[0]["sse_id"] == history[0]["id"]

    waiting = asyncio.ensure_future(next_message(stream))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # nothing new yet: the stream waits (no polling below a heartbeat)
    await job_store.apply(event("followed", Status.COMPLETED, 2))
    wakeup.stored()
    live = data(await waiting)
    assert (live["status"], live["outcome"]) == ("completed", "applied")
    assert int(str(live["id"])) > int(str(history[-1]["id"]))
    assert await next_message(stream) == b"event: end\ndata: {}\n\n"
    with pytest.raises(StopAsyncIteration):
        await next_message(stream)
    assert streams.open == 0


async def test_a_resumed_stream_starts_after_the_id_it_was_given(job_store: JobStore, wakeup: Wakeup) -> None:
    streams = Streams(job_store, wakeup, max_streams=4, heartbeat=10, buffer=16)
    for minute, status in enumerate((Status.PENDING, Status.GENERATING, Status.SAVING)):
        await job_store.apply(event("resumed", status, minute))
    ids = [e.id for e in await job_store.events_after(0, 10)]
    stream = streams.take(ids[0], job_id=None, user_id=None)
    assert stream is not None
    await next_message(stream)  # retry
    assert [data(await next_message(stream))["id"] for _ in range(2)] == ids[1:]
    await stream.aclose()  # type: ignore[attr-defined]
    assert streams.open == 0


async def test_a_users_stream_carries_only_that_users_jobs(job_store: JobStore, wakeup: Wakeup) -> None:
    streams = Streams(job_store, wakeup, max_streams=4, heartbeat=10, buffer=16)
    for job_id, user in (("alice-job", "alice"), ("bob-job", "bob")):
        await job_store.register(Registration(job_id=job_id, kind="image", user_id=user), T0)
    stream = streams.take(await job_store.last_event_id(), job_id=None, user_id="alice")
    assert stream is not None
    await next_message(stream)  # retry
    for minute, status in enumerate((Status.GENERATING, Status.COMPLETED)):
        await job_store.apply(event("bob-job", status, minute))
        await job_store.apply(event("alice-job", status, minute))
        wakeup.stored()
    received = [data(await next_message(stream)) for _ in range(2)]
    assert [(m["job_id"], m["status"], m["user_id"]) for m in received] == [
        ("alice-job", "generating", "alice"),
        ("alice-job", "completed", "alice"),
    ]
    wakeup.close()  # the app shuts down: every stream ends
    with pytest.raises(StopAsyncIteration):
        await next_message(stream)


async def test_streams_beyond_the_cap_are_refused_and_a_slot_comes_back_however_a_stream_ends(
    job_store: JobStore, wakeup: Wakeup
) -> None:
    streams = Streams(job_store, wakeup, max_streams=2, heartbeat=10, buffer=16)
    first = streams.take(0, job_id=None, user_id=None)
    second = streams.take(0, job_id=None, user_id=None)
    assert first is not None
    assert second is not None
    assert streams.take(0, job_id=None, user_id=None) is None
    await next_message(first)
    await first.aclose()  # type: ignore[attr-defined]  # a client that read, then left
    assert streams.open == 1
    del second  # a client gone before the first byte: its stream is never started
    gc.collect()
    assert streams.open == 0
    assert streams.take(0, job_id=None, user_id=None) is not None


async def test_a_client_that_stops_reading_is_sent_an_overflow_with_where_to_resume(
    job_store: JobStore, wakeup: Wakeup
) -> None:
    for number in range(10):
        await job_store.apply(event(f"flood-{number}", Status.PENDING, 0))
    streams = Streams(job_store, wakeup, max_streams=4, heartbeat=0.1, buffer=3)
    stream = streams.take(0, job_id=None, user_id=None)
    assert stream is not None
    await next_message(stream)  # retry: the stream runs, reads the ten events, and its client stops reading
    await asyncio.sleep(0.5)  # the buffer stays full beyond a heartbeat: the client is dropped
    received = [await next_message(stream) for _ in range(4)]
    sent = [data(message)["id"] for message in received[:3]]
    assert received[3].startswith(b"event: overflow\nid: %d\n" % sent[-1])
    assert b'"resume_after":%d' % sent[-1] in received[3]
    with pytest.raises(StopAsyncIteration):
        await next_message(stream)
    assert streams.open == 0
