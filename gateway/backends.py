"""The backends the settings choose, built in one place for the app (``create_app``), ``gateway migrate`` and
``gateway deliveries``: the job store and the outbox of ``DATABASE_URL``, the idempotency and rate-limit
stores (Redis with ``REDIS_URL``, else memory), and the forwarding sinks.

Nothing here opens a connection: the caller opens and closes what it gets (the app on its lifespan's
exit stack).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Database, PostgresDatabase, Settings
from gateway.delivery.http_sink import HttpSink
from gateway.delivery.jetstream import JetStreamSink
from gateway.delivery.sink import Sink
from gateway.outbox import OutboxWriter
from gateway.stores import postgres_executor, sqlite_executor
from gateway.stores.base import IdempotencyStore, RateLimitStore
from gateway.stores.memory import MemoryIdempotencyStore, MemoryRateLimitStore
from gateway.stores.postgres import PostgresJobStore
from gateway.stores.postgres_outbox import PostgresOutbox
from gateway.stores.redis import RedisIdempotencyStore, RedisRateLimitStore
from gateway.stores.sqlite import SqliteJobStore
from gateway.stores.sqlite_outbox import SqliteOutbox

__all__ = ("JobDatabase", "idempotency_store", "job_database", "migrate", "rate_limit_store", "sinks")


@dataclass(frozen=True, slots=True)
class JobDatabase:
    """The job store and the outbox of one database, running on the same executor."""

    jobs: SqliteJobStore | PostgresJobStore
    outbox: SqliteOutbox | PostgresOutbox

    async def open(self, *, apply_migrations: bool = True) -> None:
        """Open the executor; raises :class:`~gateway.model.StoreUnavailable` when the database does not answer."""
        await self.jobs.open(apply_migrations=apply_migrations)

    async def close(self) -> None:
        await self.jobs.close()

    async def release_stale_leases(self) -> None:
        """Before this process dispatches: on SQLite, the process is the file's only user, so a lease still
        held is a crashed run's and is freed at once; PostgreSQL's, shared by replicas, only expire."""
        if isinstance(self.outbox, SqliteOutbox):
            await self.outbox.release_leases()


def job_database(
    settings: Settings,
    writer: OutboxWriter | None = None,
    *,
    pool_size: int | None = None,
    timeout: float | None = None,
) -> JobDatabase:
    """Jobs, their history and the outbox: PostgreSQL when ``DATABASE_URL`` says so (shared by replicas),
    else SQLite. With a ``writer`` (forwarding on), applied events are queued in the outbox in the same
    transaction. ``pool_size`` and ``timeout`` override the settings' (PostgreSQL only)."""
    database = settings.database
    if isinstance(database, PostgresDatabase):
        jobs = PostgresJobStore(
            database.url,
            pool_size=pool_size or settings.db_pool_size,
            timeout=timeout or settings.store_timeout_seconds,
            outbox=writer,
            require_registered=settings.require_registered_jobs,
        )
        return JobDatabase(jobs, PostgresOutbox(jobs.executor))
    store = SqliteJobStore(
        database.path,
        writer,
        require_registered=settings.require_registered_jobs,
        busy_timeout_seconds=database.busy_timeout_seconds,
    )
    return JobDatabase(store, SqliteOutbox(store.executor))


async def migrate(database: Database) -> list[int]:
    """Bring ``database``'s schema up to date; the versions applied. Driver errors propagate."""
    if isinstance(database, PostgresDatabase):
        return await postgres_executor.migrate(database.url)
    return await sqlite_executor.migrate(database.path)


def sinks(settings: Settings) -> dict[str, Sink]:
    """The configured sinks, by their outbox name: the job store writes one row per applied event for each."""
    configured: dict[str, Sink] = {}
    if settings.forward_url is not None:
        configured["http"] = HttpSink(
            settings.forward_url, settings.forward_signing_key, settings.forward_timeout_seconds
        )
    if settings.nats_url is not None:
        configured["nats"] = JetStreamSink(
            settings.nats_url, subject_prefix=settings.nats_subject_prefix, stream=settings.nats_stream
        )
    return configured


def idempotency_store(settings: Settings) -> IdempotencyStore:
    """Deliveries seen: in Redis when ``REDIS_URL`` is set (one memory for every replica), else in memory."""
    if settings.redis_url is not None:
        return RedisIdempotencyStore(
            settings.redis_url,
            ttl_seconds=settings.idempotency_ttl_seconds,
            prefix=settings.redis_key_prefix,
            timeout=settings.store_timeout_seconds,
            max_connections=settings.redis_pool_size,
        )
    return MemoryIdempotencyStore(settings.idempotency_ttl_seconds, settings.idempotency_max_keys)


def rate_limit_store(settings: Settings) -> RateLimitStore | None:
    """Where the senders' budgets live: Redis when ``REDIS_URL`` is set (shared by replicas), else memory;
    ``None`` when rate limiting is off."""
    if settings.rate_limit is None and all(sender.rate is None for sender in settings.active_senders):
        return None
    if settings.redis_url is not None:
        return RedisRateLimitStore(
            settings.redis_url, prefix=settings.redis_key_prefix, max_connections=settings.redis_pool_size
        )
    return MemoryRateLimitStore()
