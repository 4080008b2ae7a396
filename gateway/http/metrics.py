"""``GET /metrics``: Prometheus text format, or OpenMetrics (with exemplars) when ``Accept`` asks for it.

Gauges read from the stores (jobs in progress, the oldest one's age, remembered idempotency keys) are
refreshed at scrape time, so they are exact when scraped and cost nothing between scrapes. When a
store cannot answer in time, the gauges keep their last values and the miss is counted in
``gateway_store_errors_total`` (the scrape itself still succeeds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get
from prometheus_client.exposition import choose_encoder

from gateway.http.auth import PUBLIC
from gateway.model import Status
from gateway.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler
    from prometheus_client import CollectorRegistry

    from gateway.outbox import Outbox
    from gateway.stores.base import IdempotencyStore, JobStore
    from gateway.telemetry.metrics import Metrics
    from gateway.telemetry.recorder import Telemetry

__all__ = ("metrics_route",)

logger = logging.getLogger(__name__)

_REFRESH_TIMEOUT_SECONDS = 2.0


def metrics_route(
    registry: CollectorRegistry,
    metrics: Metrics,
    telemetry: Telemetry,
    kinds: tuple[str, ...],
    jobs: JobStore,
    idempotency: IdempotencyStore,
    outbox: Outbox | None = None,
    sinks: tuple[str, ...] = (),
) -> HTTPRouteHandler:
    """``outbox`` and ``sinks`` only when forwarding is on: the delivery gauges are read from the outbox."""

    async def refresh() -> None:
        in_progress = await jobs.in_progress()
        now = time.time()
        for kind in kinds:
            for status in Status:
                if not status.terminal:
                    metrics.jobs_in_progress.labels(kind, status).set(0)
            metrics.job_oldest_in_progress.labels(kind).set(0)
        oldest: dict[str, float] = {}
        for row in in_progress:
            metrics.jobs_in_progress.labels(row.kind, row.status).set(row.count)
            age = max(0.0, now - row.oldest_created_at.timestamp())
            oldest[row.kind] = max(oldest.get(row.kind, 0.0), age)
        for kind, age in oldest.items():
            metrics.job_oldest_in_progress.labels(kind).set(age)
        metrics.idempotency_keys.set(await idempotency.count())
        if outbox is not None:
            backlog = {pending.sink: pending for pending in await outbox.backlog()}
            for sink in sinks:
                pending = backlog.get(sink)
                metrics.delivery_backlog.labels(sink).set(pending.count if pending is not None else 0)
                age = max(0.0, now - pending.oldest_pending_since.timestamp()) if pending is not None else 0.0
                metrics.delivery_oldest_pending.labels(sink).set(age)

    @get(
        "/metrics",
        opt=PUBLIC,
        tags=["telemetry"],
        summary="Prometheus metrics",
        include_in_schema=True,
        media_type="text/plain; version=0.0.4",
    )
    async def scrape(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            await asyncio.wait_for(refresh(), _REFRESH_TIMEOUT_SECONDS)
        except StoreUnavailable as error:
            telemetry.store_failed(error)
            logger.warning("metrics: store gauges not refreshed: %s", error)
        except TimeoutError:
            telemetry.store_failed(StoreUnavailable("job", "in_progress"))
            logger.warning("metrics: store gauges not refreshed within %.0f s", _REFRESH_TIMEOUT_SECONDS)
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        # Litestar appends the charset to a text/* type itself: given it twice, the header said it twice.
        return Response(encoder(registry), media_type=content_type.removesuffix("; charset=utf-8"))

    return scrape
