"""``GET /healthz`` (the process answers) and ``GET /readyz`` (the stores webhooks need answer, and jobs can
be written).

Readiness is a real write: a ``SELECT 1`` answered while a full disk refused every webhook. So each
``/readyz`` commits a small write to the job store (a job row of a few pages, inserted and deleted in one
transaction, never visible) and says ``unwritable`` when it fails. A probe rather than the outcome of the
last webhook: an instance taken out of rotation gets no webhooks, so only a probe can see it recover; and
it sees a full disk before any sender does. ``/readyz`` needs no credential, so asking often must not
make the gateway write often: the probe runs at most once a second, whoever asks, and concurrent askers
share it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from litestar import Response, get

from gateway.http.auth import PUBLIC
from gateway.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from gateway.stores.base import IdempotencyStore, JobStore

__all__ = ("Readiness", "WriteProbe", "health_routes")

_PROBE_SECONDS = 1.0


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    """``ready`` or ``unavailable``: ``ready`` when every store webhooks need answers (the idempotency store
    is not needed when the job store decides duplicates itself, as PostgreSQL does)."""
    stores: dict[str, str]
    """Each store's state: ``ok``, ``unavailable`` (it does not answer) or, for ``jobs``, ``unwritable``
    (it answers but a write does not commit: a full disk, a read-only database)."""


class WriteProbe:
    """The job store's state for readiness (``ok``, ``unavailable``, ``unwritable``), probed at most once
    per ``_PROBE_SECONDS``: a caller within that time gets the last answer. Event-loop only."""

    def __init__(self, jobs: JobStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs = jobs
        self._clock = clock
        self._lock = asyncio.Lock()
        self._state = ""
        self._at = 0.0

    async def state(self) -> str:
        async with self._lock:  # concurrent askers wait for the probe in flight and share its answer
            if not self._state or self._clock() - self._at >= _PROBE_SECONDS:
                self._state = await _writable(self._jobs)
                self._at = self._clock()
            return self._state


def health_routes(jobs: JobStore, idempotency: IdempotencyStore) -> list[HTTPRouteHandler]:
    probe = WriteProbe(jobs)
    # A job store that decides duplicates in its own write (PostgreSQL) makes webhooks need no idempotency
    # store: Redis down is then reported, but takes no replica out of rotation (webhooks still succeed).
    needed = {"jobs"} if jobs.decides_duplicates else {"jobs", "idempotency"}

    @get("/healthz", opt=PUBLIC, tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/readyz",
        opt=PUBLIC,
        tags=["health"],
        summary="Readiness: every store answers and a job write commits (503 naming the failing store)",
    )
    async def readyz() -> Response[Readiness]:
        stores = {"jobs": await probe.state(), "idempotency": await _state(idempotency)}
        ready = all(state == "ok" for name, state in stores.items() if name in needed)
        body = Readiness(status="ready" if ready else "unavailable", stores=stores)
        return Response(body, status_code=200 if ready else 503)

    return [healthz, readyz]


async def _writable(jobs: JobStore) -> str:
    state = await _state(jobs)
    if state != "ok":
        return state
    try:
        await jobs.probe_write()
    except StoreUnavailable:
        return "unwritable"
    return "ok"


async def _state(store: JobStore | IdempotencyStore) -> str:
    try:
        await store.ping()
    except StoreUnavailable:
        return "unavailable"
    return "ok"
