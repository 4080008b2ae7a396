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
from gateway.ingest.ratelimit import RateLimiter
from gateway.kinds import KINDS
from gateway.stores.base import RateLimitStore, StoreUnavailable
from gateway.stores.memory import MemoryIdempotencyStore, MemoryRateLimitStore
from gateway.stores.redis import RedisRateLimitStore
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
    limits = _rate_limit_store(settings)
    limiter = RateLimiter.from_settings(settings, limits, MemoryRateLimitStore(max_keys=1))
    pipeline = Pipeline(settings, jobs, idempotency, limiter=limiter)

    async def start() -> None:
        await jobs.open()
        if isinstance(limits, RedisRateLimitStore):
            try:
                await limits.ping()
            except StoreUnavailable:
                # Not fatal: GATEWAY_RATE_LIMIT_ON_ERROR applies until Redis answers.
                logger.warning("REDIS_URL does not answer yet: rate limiting follows GATEWAY_RATE_LIMIT_ON_ERROR")
        if not settings.authenticates:
            logger.warning(
                "NO AUTHENTICATION: neither WEBHOOK_SECRET nor WEBHOOK_SIGNING_KEYS is set, so webhooks "
                "from anyone are accepted. Fine for development; GATEWAY_ENV=production refuses this."
            )

    async def stop() -> None:
        await jobs.close()
        await idempotency.close()
        if limits is not None:
            await limits.close()

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


def _rate_limit_store(settings: Settings) -> RateLimitStore | None:
    """Where the senders' budgets live: Redis when ``REDIS_URL`` is set (shared by replicas), else memory."""
    if settings.rate_limit is None:
        return None
    if settings.redis_url is not None:
        return RedisRateLimitStore(settings.redis_url, prefix=settings.redis_key_prefix)
    return MemoryRateLimitStore()
