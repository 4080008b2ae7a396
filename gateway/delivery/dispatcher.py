"""The dispatcher: a background task of the app that delivers outbox rows, off the request path.

It claims due rows (each the oldest pending row of its job and sink, so a job's events go out in the
order applied while different jobs never wait on each other), sends them concurrently up to a bound,
and records each attempt's result. It wakes when the job store commits new rows or a delivery
finishes, and otherwise polls for retries coming due. Every attempt is a span linked to the trace of
the webhook that caused the event, and is counted in ``gateway_deliveries_total``.

A crash between a successful send and its recording means the row is sent again once its lease
expires (at least once): the event keeps its id, so the app deduplicates on ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Gauge, Histogram

from gateway.delivery.sink import Attempt, Dead, Delivered, Delivery, Gone, Retry, Sink
from gateway.model import StoreUnavailable

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from gateway.delivery.schedule import RetrySchedule
    from gateway.outbox import Outbox

__all__ = ("DeliveryMetrics", "Dispatcher")

logger = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 5.0
_DISABLED_REFRESH_SECONDS = 1.0
"""How often the sinks disabled by a 410 (possibly on another replica) are read again."""
_propagator = TraceContextTextMapPropagator()


class DeliveryMetrics(Protocol):
    """The series a dispatcher records (:class:`gateway.telemetry.metrics.Metrics` has them)."""

    @property
    def deliveries(self) -> Counter: ...

    @property
    def delivery_duration(self) -> Histogram: ...

    @property
    def delivery_sink_disabled(self) -> Gauge: ...

    @property
    def store_errors(self) -> Counter: ...


class Dispatcher:
    """Delivers the outbox to ``sinks`` (keyed by their outbox ``sink`` name)."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Mapping[str, Sink],
        schedule: RetrySchedule,
        metrics: DeliveryMetrics,
        tracer: Tracer,
        *,
        concurrency: int,
        lease_seconds: float,
        recording: bool = True,
        ids: IdGenerator | None = None,
    ) -> None:
        self._outbox = outbox
        self._sinks = dict(sinks)
        self._schedule = schedule
        self._metrics = metrics
        self._tracer = tracer
        self._recording = recording
        """Whether ``tracer`` records spans: when it never does, their links and attributes are not built."""
        self._ids = ids or RandomIdGenerator()
        """The ids ``tracer``'s provider draws, for the spans made here when it records none."""
        self._unrecorded_flags = (
            trace.TraceFlags.get_default() if recording else tracer.start_span("deliver").get_span_context().trace_flags
        )
        """The flags ``tracer`` gives a span it does not record (read off one, whatever the SDK's version); a
        recording tracer is not asked, so no span of it is started and left open."""
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self.owner = f"{uuid.uuid4().hex[:12]}"
        """This dispatcher's name on the leases it holds."""
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failing = False
        self._disabled: set[str] = set()
        self._disabled_read_at = -_DISABLED_REFRESH_SECONDS
        self._durations: dict[str, Histogram] = {}
        self._counted: dict[tuple[str, str], Counter] = {}
        """The series of ``delivery_duration`` and ``deliveries`` already looked up, by their labels."""
        self._delivered: list[tuple[int, asyncio.Future[bool]]] = []
        """Rows delivered whose result waits for the next write (each caller's future answers ``kept``)."""
        self._recorder: asyncio.Task[None] | None = None
        """Writes the delivered rows, one statement per batch; the rows delivered meanwhile make the next."""

    def wake(self) -> None:
        """Look for due rows now: new rows were committed."""
        self._wake.set()

    def reconsider(self) -> None:
        """Read the disabled sinks again and look for due rows now: an operator replayed rows or
        re-enabled a sink."""
        self._disabled_read_at = -_DISABLED_REFRESH_SECONDS
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-delivery-dispatcher")

    async def stop(self) -> None:
        """Stop claiming, give deliveries in flight a moment to finish, then close the sinks. The leases
        of deliveries cut off are freed, so another replica (or the next start) sends them at once; the
        app may then see them twice, with the same webhook-id. While the store has not recorded every
        delivered row by then, no lease is freed: they expire instead, which leaves those writes the
        lease's time to land before another dispatcher may send those rows again."""
        if self._task is not None:
            # A flag rather than only a cancellation: the loop may be between two awaits, and a flag
            # cannot be lost the way a cancellation racing a completed wait can.
            self._stopping = True
            self._wake.set()
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_GRACE_SECONDS)
            except TimeoutError:  # a claim stuck on the store: cut it off
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._in_flight:
            _, late = await asyncio.wait(self._in_flight, timeout=_STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            recorded = True
            if self._recorder is not None:  # the delivered rows' last write lands before any lease is freed
                finished, _ = await asyncio.wait({self._recorder}, timeout=_STOP_GRACE_SECONDS)
                recorded = bool(finished)
            if late and not recorded:
                # Freed now, a row the app already received would be sent again by another dispatcher
                # before its result lands: every lease expires instead.
                logger.warning(
                    "delivery: stopping before the store recorded what was delivered; %d deliveries cut off "
                    "are sent again once their leases expire",
                    len(late),
                )
            elif late:
                try:
                    await self._outbox.release_leases(self.owner)
                except StoreUnavailable as error:  # they expire instead
                    self._store_failed(error)
        for sink in self._sinks.values():
            await sink.close()

    async def _run(self) -> None:
        poll = self._schedule.poll_seconds
        while not self._stopping:
            self._wake.clear()
            full = False
            try:
                full = await self._claim()
            except StoreUnavailable as error:
                self._store_failed(error)
            if full:
                await asyncio.sleep(0)  # more may be due: claim again, after letting the loop breathe
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    async def _claim(self) -> bool:
        """Claim and start what is due; ``True`` when the claim was limited by free slots."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return False
        if time.monotonic() - self._disabled_read_at >= _DISABLED_REFRESH_SECONDS:
            self._disabled = {row.sink for row in await self._outbox.disabled_sinks()}
            self._disabled_read_at = time.monotonic()
            for name in self._sinks:
                self._metrics.delivery_sink_disabled.labels(name).set(1 if name in self._disabled else 0)
        active = [name for name in self._sinks if name not in self._disabled]
        if not active:
            return False
        claimed = await self._outbox.claim(self.owner, active, free, self._lease_seconds, _now())
        if self._failing:
            self._failing = False
            logger.warning("delivery outbox answers again")
        for row in claimed:
            task = asyncio.create_task(self._deliver(self._sinks[row.sink], row.delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(claimed) == free

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        # Slots are free and the job's next event may now be due. Under load, claim once half the slots
        # are free rather than once per delivery (a claim is a store round trip); the poll takes the rest.
        if len(self._in_flight) <= self._concurrency // 2:
            self._wake.set()

    async def _deliver(self, sink: Sink, delivery: Delivery) -> None:
        started = time.perf_counter()
        with self._span(sink, delivery) as span:
            try:
                attempt = await sink.send(delivery)
            except Exception as error:  # a sink's bug: retried on the schedule, and logged to be fixed
                logger.exception("%s sink raised instead of answering", sink.name)
                attempt = Retry(f"sink raised {type(error).__name__}")
            span.set_attribute("gateway.delivery.result", type(attempt).__name__.lower())
            if not isinstance(attempt, Delivered):
                span.set_status(StatusCode.ERROR, getattr(attempt, "reason", None))
            duration = self._durations.get(sink.name)
            if duration is None:
                duration = self._durations[sink.name] = self._metrics.delivery_duration.labels(sink.name)
            duration.observe(time.perf_counter() - started)
            try:
                await self._record(sink.name, delivery, attempt)
            except StoreUnavailable as error:
                # The lease expires and the row is tried again: the app may see the event twice, with
                # the same webhook-id.
                self._store_failed(error)

    def _span(self, sink: Sink, delivery: Delivery) -> contextlib.AbstractContextManager[trace.Span]:
        """The delivery's span, current while it is sent: its context is the traceparent the sink sends
        on, recorded or not. Unrecorded, it is made here as the SDK makes a span its sampler drops (fresh
        ids from the provider's generator, its flags, no parent: the dispatcher's task has none), without
        the tracer's per-span work."""
        if not self._recording:
            ids = self._ids
            context = trace.SpanContext(
                ids.generate_trace_id(), ids.generate_span_id(), is_remote=False, trace_flags=self._unrecorded_flags
            )
            return trace.use_span(trace.NonRecordingSpan(context), end_on_exit=True)
        return self._tracer.start_as_current_span(
            f"deliver {sink.name}",
            kind=SpanKind.PRODUCER,
            links=_links(delivery.traceparent),
            attributes={
                "gateway.delivery.sink": sink.name,
                "gateway.delivery.event_id": delivery.event_id,
                "gateway.delivery.attempt": delivery.attempt,
                "gateway.job.id": delivery.job_id,
                "gateway.job.kind": delivery.kind,
                "gateway.job.status": delivery.status,
            },
        )

    async def _record(self, sink: str, delivery: Delivery, attempt: Attempt) -> None:
        now = _now()
        log = {"sink": sink, "event_id": delivery.event_id, "job_id": delivery.job_id, "attempt": delivery.attempt}
        if isinstance(attempt, Delivered):
            kept = await self._record_delivered(delivery.id)
            result = "delivered"
        elif isinstance(attempt, Gone):
            await self._outbox.disable_sink(sink, attempt.reason, now)
            self._disabled.add(sink)
            kept = await self._outbox.release(delivery.id, self.owner, attempt.reason, now)
            self._metrics.delivery_sink_disabled.labels(sink).set(1)
            logger.error(
                "FORWARDING DISABLED: %s; %s deliveries wait until it is re-enabled "
                "(POST /api/deliveries/enable?sink=%s or `gateway deliveries enable --sink %s`)",
                attempt.reason,
                sink,
                sink,
                sink,
                extra=log,
            )
            result = "retried"
        else:
            delay = (
                self._schedule.next_delay(delivery.attempt, attempt.after_seconds)
                if isinstance(attempt, Retry)
                else None
            )
            if delay is None:
                reason = (
                    attempt.reason
                    if isinstance(attempt, Dead)
                    else f"{attempt.reason}; retry schedule exhausted after {delivery.attempt} attempts"
                )
                kept = await self._outbox.dead(delivery.id, self.owner, reason, now)
                logger.error("delivery %s dead-lettered: %s", delivery.event_id, reason, extra=log)
                result = "dead"
            else:
                kept = await self._outbox.retry(
                    delivery.id, self.owner, now + timedelta(seconds=delay), attempt.reason, now
                )
                logger.info("delivery %s retried in %.1f s: %s", delivery.event_id, delay, attempt.reason, extra=log)
                result = "retried"
        counter = self._counted.get((sink, result))
        if counter is None:
            counter = self._counted[sink, result] = self._metrics.deliveries.labels(sink, result)
        counter.inc()
        if not kept:
            logger.warning(
                "delivery %s: lease lost before its result was recorded (another replica took it over)",
                delivery.event_id,
                extra=log,
            )

    def _record_delivered(self, row_id: int) -> asyncio.Future[bool]:
        """Answers whether the row was still ours once it is recorded as delivered (or raises
        StoreUnavailable): rows delivered while a write is under way share the next one."""
        future = asyncio.get_running_loop().create_future()
        self._delivered.append((row_id, future))
        if self._recorder is None:
            self._recorder = asyncio.create_task(self._write_delivered(), name="gateway-delivery-recorder")
        return future

    async def _write_delivered(self) -> None:
        try:
            while self._delivered:
                batch, self._delivered = self._delivered, []
                try:
                    kept = await self._outbox.delivered_many([row_id for row_id, _ in batch], self.owner, _now())
                except StoreUnavailable as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                except BaseException:  # cancelled (the loop is closing), or a bug: nobody waits forever
                    for _, future in batch:
                        future.cancel()
                    raise
                for row_id, future in batch:
                    if not future.done():
                        future.set_result(row_id in kept)
        finally:
            self._recorder = None

    def _store_failed(self, error: StoreUnavailable) -> None:
        self._metrics.store_errors.labels(error.store, error.operation).inc()
        if not self._failing:
            logger.error("delivery outbox unavailable (%s): deliveries wait until it answers", error.operation)
        self._failing = True


def _links(traceparent: str | None) -> list[Link]:
    """A link to the webhook's span: the delivery is its consequence, in a trace of its own."""
    if traceparent is None:
        return []
    context = trace.get_current_span(_propagator.extract({"traceparent": traceparent})).get_span_context()
    return [Link(context)] if context.is_valid else []


def _now() -> datetime:
    return datetime.now(UTC)
