"""``GET /healthz`` (the process answers) and ``GET /readyz`` (every store answers, and jobs can be written).

Readiness is a real write: a ``SELECT 1`` answered while a full disk refused every webhook. So each
``/readyz`` commits a small write to the job store (a job row of a few pages, inserted and deleted in one
transaction, never visible) and says ``unwritable`` when it fails. A probe rather than the outcome of the
last webhook: an instance taken out of rotation gets no webhooks, so only a probe can see it recover; and
it sees a full disk before any sender does. It costs one short write transaction per probe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar import Response, get

from gateway.http.auth import PUBLIC
from gateway.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from gateway.stores.base import IdempotencyStore, JobStore

__all__ = ("Readiness", "health_routes")


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    """``ready`` or ``unavailable``."""
    stores: dict[str, str]
    """Each store's state: ``ok``, ``unavailable`` (it does not answer) or, for ``jobs``, ``unwritable``
    (it answers but a write does not commit: a full disk, a read-only database)."""


def health_routes(jobs: JobStore, idempotency: IdempotencyStore) -> list[HTTPRouteHandler]:
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
        stores = {"jobs": await _writable(jobs), "idempotency": await _state(idempotency)}
        ready = all(state == "ok" for state in stores.values())
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
