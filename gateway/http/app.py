"""The application factory: wires the backends (:mod:`gateway.backends`), telemetry and routes, and opens
and closes the backends on the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from gateway import __version__, backends
from gateway.answers import unavailable
from gateway.config import PostgresDatabase, Settings
from gateway.delivery.dispatcher import Dispatcher
from gateway.delivery.schedule import RetrySchedule
from gateway.http.allow import with_allow
from gateway.http.auth import PUBLIC, ApiAccess, session_routes
from gateway.http.deliveries import delivery_controller
from gateway.http.events import Streams, event_routes
from gateway.http.health import health_routes
from gateway.http.jobs import job_routes
from gateway.http.metrics import metrics_route
from gateway.http.openapi import api_docs, read_document, webhook_paths
from gateway.http.responses import error_response
from gateway.http.status_page import status_page_routes
from gateway.http.tracing import server_spans
from gateway.http.webhooks import (
    WebhooksFirst,
    provider_receiver,
    provider_route,
    sender_path,
    unknown_sender_route,
    unknown_webhook_route,
    webhook_receiver,
    webhook_route,
)
from gateway.ingest.pipeline import Pipeline
from gateway.ingest.ratelimit import RateLimiter
from gateway.jwks import KeySet
from gateway.kinds import KINDS
from gateway.outbox import Outbox, OutboxWriter
from gateway.redact import shown_url
from gateway.retention import Retention
from gateway.startup import job_store_failure
from gateway.stores.base import StoreUnavailable
from gateway.stores.memory import MemoryRateLimitStore
from gateway.telemetry.metrics import Metrics, ModelLabels
from gateway.telemetry.recorder import Telemetry
from gateway.telemetry.tracing import tracer_provider_from_env
from gateway.wakeup import Wakeup

if TYPE_CHECKING:
    from litestar.types.callable_types import GetLogger
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.trace import Tracer

    from gateway.delivery.sink import Sink

__all__ = ("create_app",)

logger = logging.getLogger("gateway")

_DELIVERY_CONCURRENCY = 32
"""Deliveries in flight at once per process (different jobs; one job's events go one at a time)."""
_LEASE_MARGIN_SECONDS = 30.0
"""A lease outlives an attempt's timeout by this much before another replica may take the row over."""


def create_app(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    webhooks_first: bool = True,
) -> Litestar:
    """Build the ASGI app; ``settings`` default to :meth:`Settings.from_env`.

    ``registry`` and ``tracer_provider`` are injectable so tests observe exactly one app's telemetry;
    by default the app gets a registry of its own (with process metrics) and a tracer provider
    configured by the ``OTEL_*`` variables. Also the entry point servers call
    (``uvicorn --factory gateway.http.app:create_app``).

    ``webhooks_first=False`` routes webhook ``POST`` requests through Litestar's router like every other
    request (the same answers: see :class:`~gateway.http.webhooks.WebhooksFirst` and docs/seams.md):
    what the benchmark's ``G-routed`` runs, to measure what the bypass buys.
    """
    settings = settings or Settings.from_env()
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    kinds = tuple(kind.name for kind in KINDS)
    metrics = Metrics(
        registry,
        kinds,
        ModelLabels(settings.model_labels, settings.max_model_labels),
        senders=[sender.name for sender in settings.active_senders],
    )
    owns_tracer_provider = tracer_provider is None
    provider = tracer_provider or tracer_provider_from_env(metrics.spans_dropped, spans_queued=metrics.spans_queued)
    tracer = provider.get_tracer("gateway", __version__)
    traced = provider.sampler is not ALWAYS_OFF  # no exporter: no span is ever recorded
    telemetry = Telemetry(metrics, traced=traced)

    sinks = backends.sinks(settings)
    forwarding = tuple(sinks)
    writer = OutboxWriter(forwarding, settings.forward_statuses) if sinks else None
    database = backends.job_database(settings, writer)
    jobs, outbox = database.jobs, database.outbox
    dispatcher = (
        _dispatcher(settings, sinks, outbox, metrics, tracer, recording=traced, ids=provider.id_generator)
        if sinks
        else None
    )
    if dispatcher is not None and writer is not None:
        writer.on_written = dispatcher.wake
        metrics.forwarding(forwarding)
    idempotency = backends.idempotency_store(settings)
    limits = backends.rate_limit_store(settings)
    if isinstance(limits, MemoryRateLimitStore):
        senders = limits
        metrics.rate_limit_keys.set_function(lambda: len(senders))
    limiter = RateLimiter.from_settings(settings, limits, MemoryRateLimitStore(max_keys=1), metrics=metrics)
    # Live streams are woken after each commit; with REDIS_URL (distributed mode) other replicas' too.
    wakeup = Wakeup(settings.redis_url, prefix=settings.redis_key_prefix, timeout=settings.store_timeout_seconds)
    # The senders with a jwks_url: their keys fetched at start-up, then kept fresh (gateway.jwks).
    key_sets = {
        sender.name: KeySet(sender.name, sender.jwks_url, metrics.jwks_state)
        for sender in settings.active_senders
        if sender.jwks_url is not None
    }
    pipeline = Pipeline(
        settings,
        jobs,
        idempotency,
        telemetry,
        limiter=limiter,
        stored=wakeup.stored,
        traced=traced,
        key_sets=key_sets,
    )
    streams = Streams(
        jobs,
        wakeup,
        max_streams=settings.sse_max_streams,
        heartbeat=settings.sse_heartbeat_seconds,
        buffer=settings.sse_buffer_events,
    )
    # The one guard of every route, chosen by the request's method: reads need the read credential, writes
    # the bearer token (closed in production without one), whatever GATEWAY_PUBLIC_READ says.
    access = ApiAccess(settings.api_token, public_read=settings.public_read, production=settings.env == "production")
    # Each store with finished records to expire adds its pruner here (name, prune(before, limit)).
    retention = (
        Retention(
            settings.retention_days,
            [("jobs", jobs.prune_finished), ("deliveries", outbox.prune_finished)],
            metrics.retention_pruned,
            telemetry.store_failed,
        )
        if settings.retention_days is not None
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        """Open the backends, each one's close pushed on the exit stack as soon as it is open: shutdown (or a
        failed start) closes them in reverse order, every one even when another's close fails."""
        async with contextlib.AsyncExitStack() as opened:
            if owns_tracer_provider:
                opened.push_async_callback(_close, "tracer provider", _flushing(provider))
            if limits is not None:
                opened.push_async_callback(_close, "rate limit store", limits.close)
            opened.push_async_callback(_close, "idempotency store", idempotency.close)
            logger.info("connecting to %s", _endpoints(settings, traced=traced))
            try:
                await database.open(apply_migrations=settings.migrate_on_start)
            except StoreUnavailable as error:
                raise job_store_failure(settings.database, error.__cause__) from error
            opened.push_async_callback(_close, "job store", database.close)
            if settings.redis_url is not None:
                try:
                    await idempotency.ping()
                except StoreUnavailable:
                    # Not fatal: Redis may come back; until then each webhook is refused (503), nothing recorded.
                    logger.warning(
                        "REDIS_URL (%s) does not answer: webhooks are answered 503 until it does. Check its host, "
                        "port and password, and that Redis runs.",
                        shown_url(settings.redis_url),
                    )
            await wakeup.start()
            opened.push_async_callback(_close, "wakeup", wakeup.stop)
            if dispatcher is not None:
                await database.release_stale_leases()
                dispatcher.start()
                opened.push_async_callback(_close, "dispatcher", dispatcher.stop)
            if limits is not None and settings.redis_url is not None:
                try:
                    await limits.ping()
                except StoreUnavailable:
                    # Not fatal: GATEWAY_RATE_LIMIT_ON_ERROR applies until Redis answers.
                    logger.warning("REDIS_URL does not answer yet: rate limiting follows GATEWAY_RATE_LIMIT_ON_ERROR")
            if retention is not None:
                retention.start()
                opened.push_async_callback(_close, "retention", retention.stop)
            # A first fetch that fails is not fatal: that sender is answered 503 until one succeeds.
            await asyncio.gather(*(key_set.start() for key_set in key_sets.values()))
            for key_set in key_sets.values():
                opened.push_async_callback(_close, f"key set of sender {key_set.sender!r}", key_set.stop)
            _warn_open_access(settings, access)
            yield

    def store_unavailable(_: Request[Any, Any, Any], error: StoreUnavailable) -> Response[bytes]:
        telemetry.store_failed(error)
        refusal = unavailable(error.store)
        return error_response(refusal.status_code, refusal.detail, refusal.headers)

    receivers = {kind: webhook_receiver(kind, pipeline) for kind in KINDS}
    providers = {provider: provider_receiver(provider, pipeline) for provider in pipeline.providers.values()}
    spans = server_spans(tracer, recording=traced)
    first = {kind.route: spans(receiver) for kind, receiver in receivers.items()}
    first.update({sender_path(provider.name): spans(receiver) for provider, receiver in providers.items()})
    app = WebhooksFirst(
        webhooks=first if webhooks_first else {},
        webhook_paths=lambda: webhook_paths(KINDS, pipeline.providers.values()),
        route_handlers=[
            *(webhook_route(kind, receiver) for kind, receiver in receivers.items()),
            unknown_webhook_route(tuple(kind.route for kind in KINDS), telemetry),
            *(provider_route(provider, receiver) for provider, receiver in providers.items()),
            unknown_sender_route(tuple(pipeline.providers), telemetry),
            *job_routes(jobs, settings.max_body_bytes),
            *event_routes(streams, jobs),
            *session_routes(access),
            *health_routes(jobs, idempotency),
            delivery_controller(outbox, dispatcher.reconsider if dispatcher is not None else _nothing),
            metrics_route(
                registry,
                metrics,
                telemetry,
                kinds,
                jobs,
                idempotency,
                outbox if sinks else None,
                forwarding,
            ),
            *status_page_routes(),
        ],
        middleware=[spans],
        guards=[access.guard],
        on_app_init=[with_allow],
        exception_handlers={StoreUnavailable: store_unavailable},
        # No route reads more than a webhook may send (Litestar's default is 10 MB); some read less.
        request_max_body_size=settings.max_body_bytes,
        lifespan=[lifespan],
        # `gateway serve` ends the live streams when the server is told to stop (see gateway.cli), before
        # it waits for open connections: an open stream must not hold up a graceful shutdown.
        # The job store: for tests that make it fail; the key sets: for tests that rotate or take down a JWKS.
        state=State({"wakeup": wakeup, "jobs": jobs, "key_sets": key_sets}),
        # Litestar's records (unhandled exceptions included) go to the root logger, which the gateway
        # configures (JSON or console); Litestar must not install its own root handler.
        logging_config=PropagatingLoggingConfig(
            log_exceptions="always",
            # A client's mistake (404, 400, ...) is answered, not an error of ours: only 5xx are logged.
            disable_stack_trace=set(range(400, 500)),
        ),
        openapi_config=OpenAPIConfig(
            title="gateway",
            version=__version__,
            description="Receives job-status webhooks from the generation backend, applies each exactly "
            "once to its job, and serves every job's state and history.",
            render_plugins=api_docs(),
            openapi_router=Router(
                "/schema", route_handlers=[], include_in_schema=False, opt=PUBLIC, before_request=read_document
            ),
        ),
    )
    return app


class PropagatingLoggingConfig(LoggingConfig):
    """Litestar's exception logging (its ``log_exceptions`` and ``disable_stack_trace``), whose records
    propagate at INFO to the root logger the gateway configures (:func:`~gateway.telemetry.logs.configure_logging`).

    Building an app touches no other logging state: no ``dictConfig``, no handler of its own. Litestar's
    :meth:`LoggingConfig.configure` would run ``dictConfig`` at every app, which closes every handler the
    process has and starts a ``QueueListener`` thread nothing ever stops (litestar-org/litestar#3080): one
    more thread for each app built, in tests and reloads.
    """

    def configure(self) -> GetLogger:
        litestar_logger = logging.getLogger("litestar")
        litestar_logger.setLevel(logging.INFO)
        litestar_logger.propagate = True
        return logging.getLogger


def _endpoints(settings: Settings, *, traced: bool) -> str:
    """Where the stores and sinks are, for the start-up line: every URL through :func:`shown_url`."""
    database = settings.database
    shown = [f"jobs {database.shown if isinstance(database, PostgresDatabase) else database.path}"]
    if settings.redis_url is not None:
        shown.append(f"redis {shown_url(settings.redis_url)}")
    if settings.forward_url is not None:
        shown.append(f"forwarding {shown_url(settings.forward_url)}")
    if settings.nats_url is not None:
        shown.append(f"nats {shown_url(settings.nats_url)}")
    if traced and settings.otlp_endpoint:
        shown.append(f"spans {shown_url(settings.otlp_endpoint)}")
    return ", ".join(shown)


def _dispatcher(
    settings: Settings,
    sinks: dict[str, Sink],
    outbox: Outbox,
    metrics: Metrics,
    tracer: Tracer,
    *,
    recording: bool,
    ids: IdGenerator,
) -> Dispatcher:
    """The background delivery of the outbox to ``sinks``."""
    return Dispatcher(
        outbox,
        sinks,
        RetrySchedule(settings.forward_retry_schedule),
        metrics,
        tracer,
        concurrency=_DELIVERY_CONCURRENCY,
        lease_seconds=settings.forward_timeout_seconds + _LEASE_MARGIN_SECONDS,
        recording=recording,
        ids=ids,
    )


def _nothing() -> None:
    """No dispatcher to wake: forwarding is off (replayed rows wait until it is on)."""


async def _close(name: str, close: Callable[[], Awaitable[None]]) -> None:
    """Close one backend at shutdown; a failure is logged, and the others still close."""
    try:
        await close()
    except Exception:
        logger.exception("shutdown: closing the %s failed; closing the others", name)


def _flushing(provider: TracerProvider) -> Callable[[], Awaitable[None]]:
    """The tracer provider's shutdown (it flushes the queued spans) as a close."""

    async def flush() -> None:
        provider.shutdown()

    return flush


def _warn_open_access(settings: Settings, access: ApiAccess) -> None:
    """Say at start-up what is open to anyone (unauthenticated webhooks, an open API) and which credential
    variables a senders file leaves unused."""
    for name in settings.unnamed_credentials:
        logger.warning(
            "%s is set but no sender of GATEWAY_SENDERS_FILE names it: with a senders file it is ignored "
            "(name it as a sender's secret_env or signing_keys_env, or unset it)",
            name,
        )
    open_senders = [sender.name for sender in settings.senders if not sender.authenticates]
    if not settings.authenticates:
        logger.warning(
            "NO AUTHENTICATION: neither WEBHOOK_SECRET nor WEBHOOK_SIGNING_KEYS is set, so webhooks "
            "from anyone are accepted. Fine for development; GATEWAY_ENV=production refuses this."
            if not settings.senders
            else "NO AUTHENTICATION: no sender of GATEWAY_SENDERS_FILE names a credential, so webhooks from "
            "anyone are accepted. Fine for development; GATEWAY_ENV=production refuses this."
        )
    elif open_senders:
        logger.warning(
            "sender %r of GATEWAY_SENDERS_FILE has no credential: webhooks no other sender's credentials "
            "verify are accepted as its. Fine for development; GATEWAY_ENV=production refuses this.",
            open_senders[0],
        )
    if access.writes_closed:
        logger.warning(
            "GATEWAY_API_TOKEN is not set: job registration and delivery replays are refused (403) in "
            "production; reads are open (GATEWAY_PUBLIC_READ=true)."
        )
    elif not access.required:
        logger.warning(
            "OPEN API: GATEWAY_API_TOKEN is not set, so anyone who reaches the gateway reads every job and "
            "may register jobs and replay deliveries. GATEWAY_ENV=production refuses this unless "
            "GATEWAY_PUBLIC_READ=true, and then keeps those writes closed."
        )
