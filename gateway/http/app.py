"""The application factory: builds the stores from the settings and wires them into the routes."""

from __future__ import annotations

import logging

from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from gateway import __version__
from gateway.config import Settings
from gateway.http.health import health_routes
from gateway.http.jobs import job_routes
from gateway.http.webhooks import webhook_route
from gateway.ingest.pipeline import Pipeline
from gateway.kinds import KINDS
from gateway.stores.memory import MemoryIdempotencyStore
from gateway.stores.sqlite import SqliteJobStore

__all__ = ("create_app",)

logger = logging.getLogger("gateway")


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the ASGI app; ``settings`` default to :meth:`Settings.from_env`.

    Also the entry point servers call (``uvicorn --factory gateway.http.app:create_app``).
    """
    settings = settings or Settings.from_env()
    jobs = SqliteJobStore(settings.database.path)
    idempotency = MemoryIdempotencyStore(settings.idempotency_ttl_seconds, settings.idempotency_max_keys)
    pipeline = Pipeline(settings, jobs, idempotency)

    async def start() -> None:
        await jobs.open()
        if not settings.authenticates:
            logger.warning(
                "NO AUTHENTICATION: neither WEBHOOK_SECRET nor WEBHOOK_SIGNING_KEYS is set, so webhooks "
                "from anyone are accepted. Fine for development; GATEWAY_ENV=production refuses this."
            )

    async def stop() -> None:
        await jobs.close()
        await idempotency.close()

    return Litestar(
        route_handlers=[
            *(webhook_route(kind, pipeline) for kind in KINDS),
            *job_routes(jobs),
            *health_routes(jobs, idempotency),
        ],
        on_startup=[start],
        on_shutdown=[stop],
        openapi_config=OpenAPIConfig(
            title="gateway",
            version=__version__,
            description="Receives job-status webhooks from the generation backend, applies each exactly "
            "once to its job, and serves every job's state and history.",
        ),
    )
