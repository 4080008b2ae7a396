"""The store protocols the ingest pipeline and the read API depend on; backends implement them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from gateway.gcra import RateDecision
from gateway.model import Applied, InProgress, Job, JobEvent, JobPage, JobStats, Status, StreamEvent
from gateway.registration import Registered, Registration
from gateway.stores.queries import JobQuery

__all__ = ("IdempotencyStore", "JobStore", "Outage", "RateDecision", "RateLimitStore", "StoreUnavailable")


class StoreUnavailable(Exception):
    """A store could not answer (unreachable, timed out, failing): the webhook is refused with 503, never
    half-applied, so the sender's retry is safe."""

    def __init__(self, store: str, operation: str) -> None:
        super().__init__(f"{store} store failed during {operation}")
        self.store = store
        self.operation = operation


class IdempotencyStore(Protocol):
    """Remembers deliveries already processed: the fast path in front of the job store's constraint."""

    async def claim(self, keys: Sequence[str]) -> bool:
        """Atomically remember ``keys``; ``False`` (and nothing remembered) if any was already known."""
        ...

    async def release(self, keys: Sequence[str]) -> None:
        """Forget a claim whose processing failed, so the sender's retry is not taken for a duplicate."""
        ...

    async def count(self) -> int:
        """How many keys are remembered now."""
        ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        ...

    async def close(self) -> None: ...


class JobStore(Protocol):
    """Jobs and their event history; the last guard of exactly-once (a unique constraint on event keys)."""

    async def apply(self, event: JobEvent) -> Applied:
        """Record ``event`` and apply its transition in one transaction.

        Returns outcome ``duplicate`` when the event (its key, or its ``delivery_id`` for the same job) is
        already recorded. Raises :class:`~gateway.model.DeliveryConflict` when its ``delivery_id`` is recorded
        for another job, :class:`~gateway.model.KindConflict` when the job exists under another kind, and
        :class:`~gateway.model.Unregistered` when registration is required and the app never registered it.
        Runs to its end even if the caller is cancelled meanwhile (the server's shutdown deadline), so
        the sender is answered for what was recorded (see :func:`to_the_end`).
        """
        ...

    async def status_of(self, job_id: str) -> Status | None: ...

    async def recorded(self, event: JobEvent) -> Status | None:
        """The job's status if ``event`` (its key or its ``delivery_id``) is recorded, else ``None``.

        The pipeline asks before answering ``duplicate``, so a 200 always stands for a recorded event,
        even when the idempotency store holds a claim whose write failed and was never released. Raises
        :class:`~gateway.model.DeliveryConflict` when its key is not recorded but its ``delivery_id`` is,
        for another job.
        """
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job with its full history, or ``None``."""
        ...

    async def list_jobs(self, query: JobQuery) -> JobPage:
        """Jobs newest first, filtered by ``query``; its ``cursor`` is the previous page's ``next_cursor``."""
        ...

    async def register(self, registration: Registration, now: datetime) -> Registered:
        """Create the job (``pending``) with its context, or attach the context to the job its webhooks
        created, or compare with the registration already stored. Raises
        :class:`~gateway.model.KindConflict` when the job exists under another kind."""
        ...

    async def events_after(
        self, after: int, limit: int, *, job_id: str | None = None, user_id: str | None = None
    ) -> list[StreamEvent]:
        """Up to ``limit`` recorded events with an id above ``after``, in id order (what live streams read)."""
        ...

    async def last_event_id(self) -> int:
        """The highest event id recorded (0 when none): where a stream of new events starts."""
        ...

    async def stats(self, since: datetime, until: datetime) -> JobStats:
        """Jobs created in ``[since, until)`` by status, and how many finished in it, and how."""
        ...

    async def in_progress(self) -> list[InProgress]:
        """Counts of jobs per kind and non-terminal status, with the oldest's creation time."""
        ...

    async def prune_finished(self, before: datetime, limit: int) -> int:
        """Delete at most ``limit`` jobs that finished (any terminal status) before ``before``, with
        their history, in one transaction; return how many jobs were deleted (retention)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        ...

    async def probe_write(self) -> None:
        """Raise :class:`StoreUnavailable` unless a write commits now: a job row that needs a few pages is
        inserted and deleted in one committed transaction (nothing visible changes). For readiness."""
        ...

    async def close(self) -> None: ...


class Outage:
    """Whether one kind of a store's calls (its writes, its reads) currently fail, as the last one found.

    The change of state is logged, once each way: an ERROR when calls start failing, a WARNING when one
    works again. The calls refused in between are counted (``gateway_store_errors_total``, by whoever
    answers them), never logged one by one: a full disk refusing ten thousand webhooks is one line.
    Event-loop only.
    """

    __slots__ = ("_failing", "_logger", "_what")

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self._what = what
        self._logger = logger
        self._failing = False

    @property
    def failing(self) -> bool:
        return self._failing

    def failed(self, operation: str, reason: str) -> None:
        """A call failed because of the store; ``reason`` names the error (never data)."""
        if not self._failing:
            self._failing = True
            self._logger.error(
                "%s fail (%s: %s): refused with 503 until one works again; each refusal is counted in "
                "gateway_store_errors_total",
                self._what,
                operation,
                reason,
            )

    def worked(self) -> None:
        if self._failing:
            self._failing = False
            self._logger.warning("%s work again", self._what)


class RateLimitStore(Protocol):
    """Per-key GCRA state (one timestamp per key), decided and updated in one atomic step.

    Atomic because several requests of one sender, on one or several gateway processes, race for the
    same budget: a read-then-write would let a burst through twice.
    """

    async def acquire(self, key: str, interval_us: int, tolerance_us: int) -> RateDecision:
        """Count one request against ``key``: ``interval_us`` is the emission interval (the window divided by
        the count), ``tolerance_us`` the burst tolerance (burst x interval). Raise :class:`StoreUnavailable`
        if the store cannot answer."""
        ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        ...

    async def close(self) -> None: ...


T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile (the shutdown deadline).

    A write cut off half-way would leave its outcome unknown: a 503 could then stand for a recorded
    event. Every store call is bounded by its own timeout, so finishing it costs at most that long, and
    the sender gets the truthful answer (200, or 503 if the store failed). A coroutine runs as a task of
    its own; a future (SQLite's writer thread answers one) is awaited as it is, with no task: on the hot
    path a task per webhook measurably slowed the embedded store's group commit.
    """
    task = asyncio.ensure_future(work)
    interrupted = 0
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            interrupted += 1
    current = asyncio.current_task()
    for _ in range(interrupted if current is not None else 0):
        current.uncancel()  # type: ignore[union-attr]
    return task.result()
