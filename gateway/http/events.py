"""Live progress as Server-Sent Events: ``GET /api/jobs/{job_id}/events`` and ``GET /api/jobs/events``.

Every message is one recorded event, read from the job store by its global id (``id:``), so a client
that reconnects with ``Last-Event-ID`` (or ``?after=``) gets exactly the events it has not seen: none
missed, none repeated. A stream reads the store when :class:`~gateway.wakeup.Wakeup` says something new
was stored, and at least every heartbeat. Each stream buffers at most ``GATEWAY_SSE_BUFFER_EVENTS``
messages; a client that leaves that buffer full for a heartbeat interval gets ``event: overflow`` (with
the id to resume from) and the stream ends, so a slow client costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar import Response, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter
from litestar.response import Stream

from gateway.http.params import MAX_EVENT_ID, AfterEvent, IdFilter, JobIdPath
from gateway.http.responses import UNAUTHORIZED, ErrorBody, error_response
from gateway.model import Outcome, StreamEvent
from gateway.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from gateway.stores.base import JobStore
    from gateway.wakeup import Wakeup

__all__ = ("SseMessage", "Streams", "event_routes")

logger = logging.getLogger(__name__)

_READ_BATCH = 100
_RETRY_MS = 2000
"""Sent first: how long a browser's EventSource waits before reconnecting."""
_encode = msgspec.json.Encoder().encode


class _End:
    """The last item of a stream's buffer: the stream ends after it (its text may be empty)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes = b"") -> None:
        self.text = text


_Item = tuple[int, bytes] | bytes | _End
"""An event (its id, its text), a comment, or the end."""


class SseMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a live stream as an EventSource parses it: what the 200 answer documents."""

    event: Literal["message", "overflow", "end"] = "message"
    """``message``: one recorded event; ``overflow``: the client read too slowly, the stream ends;
    ``end``: the job has finished, the stream ends."""
    data: str
    """JSON: a :class:`~gateway.model.StreamEvent` for ``message``, ``{"resume_after", "reason"}`` for
    ``overflow``, ``{}`` for ``end``."""
    id: str | None = None
    """The event's global id: what ``Last-Event-ID`` resumes after."""
    retry: int | None = None
    """Sent first: how long (ms) an EventSource waits before reconnecting."""


_LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description="Resume after this event id: what a reconnecting EventSource sends (wins over `after`)",
    ),
]

_STREAM_RESPONSES = {
    200: ResponseSpec(
        SseMessage,
        generate_examples=False,
        media_type="text/event-stream",
        description="Server-Sent Events: `retry:` first, then one message per recorded event (`id:` its "
        "global id, `data:` the event as JSON), `: heartbeat` comments, and `event: overflow` (with the id "
        "to resume from) before ending the stream of a client that read too slowly.",
    ),
    401: UNAUTHORIZED,
    503: ResponseSpec(
        ErrorBody,
        generate_examples=False,
        description="`GATEWAY_SSE_MAX_STREAMS` streams are open on this replica: retry after `Retry-After`.",
    ),
}


def _message(event: StreamEvent) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event.id, _encode(event))


class _Slot:
    """One stream's place among ``GATEWAY_SSE_MAX_STREAMS``, given back once however often released."""

    __slots__ = ("_streams",)

    def __init__(self, streams: Streams) -> None:
        self._streams: Streams | None = streams

    def release(self) -> None:
        if self._streams is not None:
            self._streams.open -= 1
            self._streams = None


class Streams:
    """The open live streams of this process: at most ``max_streams``, each bounded to ``buffer`` messages."""

    def __init__(self, jobs: JobStore, wakeup: Wakeup, *, max_streams: int, heartbeat: float, buffer: int) -> None:
        self._jobs = jobs
        self._wakeup = wakeup
        self._max_streams = max_streams
        self._heartbeat = heartbeat
        self._buffer = buffer
        self.open = 0

    def take(self, after: int, *, job_id: str | None, user_id: str | None) -> AsyncIterator[bytes] | None:
        """A stream's bytes, holding one of the ``max_streams`` slots; ``None`` when every slot is taken.

        The slot is taken here, with no ``await`` between the check and the take, so a burst of requests
        never opens more than ``max_streams``. It is given back when the stream ends however it ends, or
        when the stream is dropped without ever being started (a client gone before the first byte).
        """
        if self.open >= self._max_streams:
            return None
        self.open += 1
        slot = _Slot(self)
        stream = self._run(after, job_id, user_id, slot)
        weakref.finalize(stream, slot.release)
        return stream

    async def _run(self, after: int, job_id: str | None, user_id: str | None, slot: _Slot) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[_Item] = asyncio.Queue(self._buffer)
        room = asyncio.Event()
        dropped = asyncio.Event()
        producer = asyncio.create_task(
            _guarded(queue, partial(self._produce, queue, room, dropped, after, job_id, user_id))
        )
        sent = after
        try:
            yield b"retry: %d\n\n" % _RETRY_MS
            while True:
                if dropped.is_set() and queue.empty():
                    # The producer gave up on this client (it stops reading more); what was buffered is sent.
                    logger.warning("live stream dropped a slow client after event %d", sent)
                    resume = _encode({"resume_after": sent, "reason": "the client read too slowly"})
                    yield b"event: overflow\nid: %d\ndata: %s\n\n" % (sent, resume)
                    return
                item = await queue.get()
                room.set()
                if isinstance(item, _End):
                    if item.text:
                        yield item.text
                    return
                if isinstance(item, bytes):
                    yield item
                    continue
                sent, text = item
                yield text
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            slot.release()

    async def _produce(
        self,
        queue: asyncio.Queue[_Item],
        room: asyncio.Event,
        dropped: asyncio.Event,
        after: int,
        job_id: str | None,
        user_id: str | None,
    ) -> None:
        """Read the store into the buffer until the stream ends; runs beside the writer (:meth:`run`)."""
        loop = asyncio.get_running_loop()
        closed = self._wakeup.closed
        heartbeat_due = loop.time() + self._heartbeat
        # Asked before the first read: a job finished by then has all its events up to the end stored, so
        # the stream sends them and ends; a job finishing later ends it with its terminal event.
        finished = job_id is not None and await self._terminal(job_id)
        while not closed.is_set():
            changed = self._wakeup.changed()
            try:
                events = await self._jobs.events_after(after, _READ_BATCH, job_id=job_id, user_id=user_id)
            except StoreUnavailable:
                events = []  # tried again at the next wake-up or heartbeat; the client keeps its place
            for event in events:
                if not await self._put(queue, room, dropped, (event.id, _message(event))):
                    return
                after = event.id
                heartbeat_due = loop.time() + self._heartbeat
            finished = finished or any(e.status.terminal and e.outcome is Outcome.APPLIED for e in events)
            if job_id is not None and finished and len(events) < _READ_BATCH:
                await self._put(queue, room, dropped, _End(b"event: end\ndata: {}\n\n"))
                return
            if len(events) == _READ_BATCH:
                continue
            timeout = heartbeat_due - loop.time()
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await changed.wait()
            if loop.time() >= heartbeat_due:
                if not await self._put(queue, room, dropped, b": heartbeat\n\n"):
                    return
                heartbeat_due = loop.time() + self._heartbeat
        await self._put(queue, room, dropped, _End())

    async def _terminal(self, job_id: str) -> bool:
        try:
            status = await self._jobs.status_of(job_id)
        except StoreUnavailable:
            return False
        return status is not None and status.terminal

    async def _put(self, queue: asyncio.Queue[_Item], room: asyncio.Event, dropped: asyncio.Event, item: _Item) -> bool:
        """Buffer ``item``, waiting up to a heartbeat for the client to make room; else drop it (``False``)."""
        while queue.full():
            room.clear()
            try:
                async with asyncio.timeout(self._heartbeat):
                    await room.wait()
            except TimeoutError:
                dropped.set()
                return False
        queue.put_nowait(item)
        return True


async def _guarded(queue: asyncio.Queue[_Item], produce: Callable[[], Awaitable[None]]) -> None:
    """Run ``produce`` (:meth:`Streams._produce`); if it fails (a bug: store failures are retried) the
    stream ends rather than hangs, and the client reconnects with the last id it got, losing nothing."""
    try:
        await produce()
    except Exception:
        logger.exception("live stream failed; ending it so the client reconnects")
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_End())


def _resume_point(header: str | None, after: int | None) -> int | None:
    """``Last-Event-ID`` (what a reconnecting EventSource sends) wins over ``?after=``."""
    if header is None or not header.strip():
        return after
    text = header.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_EVENT_ID):
        raise ValidationException("Last-Event-ID must be the id of an event this stream sent (a number)")
    return int(text)


def event_routes(streams: Streams, jobs: JobStore) -> list[HTTPRouteHandler]:
    """The two live-stream routes (the app's guard asks for the read credential)."""

    def open_stream(after: int, job_id: str | None, user_id: str | None) -> Response[Any]:
        stream = streams.take(after, job_id=job_id, user_id=user_id)
        if stream is None:
            return error_response(
                503,
                "Too many live streams open on this replica (GATEWAY_SSE_MAX_STREAMS): retry later",
                {"Retry-After": "5"},
            )
        return Stream(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @get(
        "/api/jobs/{job_id:str}/events",
        tags=["jobs"],
        summary="Live progress of one job (SSE): its history, then new events; ends after a terminal status",
        responses={
            **_STREAM_RESPONSES,
            204: ResponseSpec(
                None, description="The job has finished and every event was sent: an EventSource stops reconnecting."
            ),
            404: ResponseSpec(ErrorBody, generate_examples=False, description="No job with this id."),
        },
    )
    async def job_events(
        job_id: JobIdPath, after: AfterEvent = None, last_event_id: _LastEventId = None
    ) -> Response[Any]:
        status = await jobs.status_of(job_id)
        if status is None:
            raise NotFoundException(f"No job with id {job_id!r}")
        start = _resume_point(last_event_id, after) or 0
        if status.terminal and not await jobs.events_after(start, 1, job_id=job_id):
            # Finished and nothing left to send: 204 tells an EventSource to stop reconnecting.
            return Response(None, status_code=204)
        return open_stream(start, job_id, None)

    @get(
        "/api/jobs/events",
        tags=["jobs"],
        summary="Live progress of every job, or of one user's (SSE); new events unless told where to resume",
        responses=_STREAM_RESPONSES,
    )
    async def all_events(
        user_id: IdFilter = None, after: AfterEvent = None, last_event_id: _LastEventId = None
    ) -> Response[Any]:
        start = _resume_point(last_event_id, after)
        if start is None:
            start = await jobs.last_event_id()
        return open_stream(start, None, user_id)

    return [job_events, all_events]
