"""``GET /healthz`` (the process answers) and ``GET /readyz`` (every store answers)."""

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
    """Each store's state: ``ok`` or ``unavailable``."""


def health_routes(jobs: JobStore, idempotency: IdempotencyStore) -> list[HTTPRouteHandler]:
    @get("/healthz", opt=PUBLIC, tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", opt=PUBLIC, tags=["health"], summary="Readiness: every store answers (503 naming the failing one)")
    async def readyz() -> Response[Readiness]:
        stores = {"jobs": await _state(jobs), "idempotency": await _state(idempotency)}
        ready = all(state == "ok" for state in stores.values())
        body = Readiness(status="ready" if ready else "unavailable", stores=stores)
        return Response(body, status_code=200 if ready else 503)

    return [healthz, readyz]


async def _state(store: JobStore | IdempotencyStore) -> str:
    try:
        await store.ping()
    except StoreUnavailable:
        return "unavailable"
    return "ok"
