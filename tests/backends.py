"""Every store backend, built in one place, and the fixtures the contract suites run over.

One factory per backend: a test that needs a store of a given backend builds it here, so a change of a
store's constructor is adapted once. The parametrised fixtures (``job_store``, ``idempotency_store``,
``rate_limit_store``, ``outbox_store``, ``migration_target``) run a test once per backend that implements
the protocol, against real PostgreSQL and Redis; their parameter names (``postgresql``, ``redis``) mark
those runs ``services`` (tests/conftest.py). Loaded as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.config import Database, PostgresDatabase, SqliteDatabase
from gateway.outbox import Outbox, OutboxWriter
from gateway.stores.base import IdempotencyStore, JobStore, RateLimitStore
from gateway.stores.memory import MemoryIdempotencyStore, MemoryRateLimitStore
from gateway.stores.migrations import Target
from gateway.stores.postgres import PostgresJobStore
from gateway.stores.postgres_executor import PostgresMigrations
from gateway.stores.postgres_outbox import PostgresOutbox
from gateway.stores.redis import RedisIdempotencyStore, RedisRateLimitStore
from gateway.stores.sqlite import SqliteJobStore
from gateway.stores.sqlite_executor import SqliteMigrations
from gateway.stores.sqlite_outbox import SqliteOutbox
from gateway.stores.sqlite_wal import RESET_FRAMES

JOB_BACKENDS = ("sqlite", "postgresql")
IDEMPOTENCY_BACKENDS = ("memory", "redis")
RATE_LIMIT_BACKENDS = ("memory", "redis")
OUTBOX_BACKENDS = ("sqlite", "postgresql")


def sqlite_job_store(
    path: Path | str,
    *,
    outbox: OutboxWriter | None = None,
    require_registered: bool = False,
    wal_reset_frames: int = RESET_FRAMES,
) -> SqliteJobStore:
    """A SQLite job store on ``path`` (not opened)."""
    return SqliteJobStore(str(path), outbox, require_registered=require_registered, wal_reset_frames=wal_reset_frames)


def postgres_job_store(
    url: str,
    *,
    outbox: OutboxWriter | None = None,
    require_registered: bool = False,
    pool_size: int = 10,
    timeout: float = 2.0,
) -> PostgresJobStore:
    """A PostgreSQL job store on ``url`` (not opened)."""
    return PostgresJobStore(
        url, pool_size=pool_size, timeout=timeout, outbox=outbox, require_registered=require_registered
    )


def job_store_of(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, **options: bool | OutboxWriter | None
) -> SqliteJobStore | PostgresJobStore:
    """A job store of ``backend`` (``sqlite`` in ``tmp_path``, ``postgresql`` in a fresh schema; not opened)."""
    outbox = options.get("outbox")
    assert outbox is None or isinstance(outbox, OutboxWriter)
    required = bool(options.get("require_registered", False))
    if backend == "sqlite":
        return sqlite_job_store(tmp_path / "jobs.db", outbox=outbox, require_registered=required)
    return postgres_job_store(
        request.getfixturevalue("database_url"), outbox=outbox, require_registered=required, pool_size=20
    )


def outbox_of(store: SqliteJobStore | PostgresJobStore) -> Outbox:
    """The outbox whose rows ``store`` writes with each applied event."""
    if isinstance(store, SqliteJobStore):
        return SqliteOutbox(store.executor)
    return PostgresOutbox(store.executor)


def memory_idempotency_store(*, ttl_seconds: float = 60, max_keys: int = 1000) -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore(ttl_seconds=ttl_seconds, max_keys=max_keys)


def redis_idempotency_store(
    url: str, prefix: str, *, ttl_seconds: int = 60, timeout: float = 2.0
) -> RedisIdempotencyStore:
    return RedisIdempotencyStore(url, ttl_seconds=ttl_seconds, prefix=prefix, timeout=timeout)


def memory_rate_limit_store() -> MemoryRateLimitStore:
    return MemoryRateLimitStore()


def redis_rate_limit_store(url: str, prefix: str, *, timeout: float = 2.0) -> RedisRateLimitStore:
    # 2 s, not the store's own bound: a first call opens a connection and loads the script, which on a
    # slow CI host took longer than 250 ms; the bound itself has its own test (an unreachable Redis).
    return RedisRateLimitStore(url, prefix=prefix, timeout=timeout)


@pytest.fixture(params=JOB_BACKENDS)
async def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    """An open job store of each backend."""
    store = job_store_of(request.param, request, tmp_path)
    await store.open()
    yield store
    await store.close()


@pytest.fixture(params=OUTBOX_BACKENDS)
async def outbox_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SqliteJobStore | PostgresJobStore, Outbox]]:
    """An open job store of each backend writing outbox rows for an ``http`` sink, and its outbox."""
    store = job_store_of(request.param, request, tmp_path, outbox=OutboxWriter(("http",), None))
    await store.open()
    yield store, outbox_of(store)
    await store.close()


@pytest.fixture(params=JOB_BACKENDS)
async def migration_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Database, Target]]:
    """A fresh, empty database of each job backend (as the settings name it) and the migration runner's
    target on a connection of its own to it."""
    if request.param == "sqlite":
        path = str(tmp_path / "migrations.db")
        db = sqlite3.connect(path, isolation_level=None)
        yield SqliteDatabase(path), SqliteMigrations(db)
        db.close()
        return
    url = request.getfixturevalue("database_url")
    connection = await asyncpg.connect(url)
    yield PostgresDatabase(url), PostgresMigrations(connection)
    await connection.close()


def job_store_on(database: Database) -> SqliteJobStore | PostgresJobStore:
    """A job store on ``database`` (not opened)."""
    if isinstance(database, SqliteDatabase):
        return sqlite_job_store(database.path)
    return postgres_job_store(database.url)


@pytest.fixture(params=IDEMPOTENCY_BACKENDS)
async def idempotency_store(request: pytest.FixtureRequest) -> AsyncIterator[IdempotencyStore]:
    """An idempotency store of each backend, keys kept 60 s."""
    store: IdempotencyStore
    if request.param == "memory":
        store = memory_idempotency_store()
    else:
        store = redis_idempotency_store(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    yield store
    await store.close()


@pytest.fixture(params=RATE_LIMIT_BACKENDS)
async def rate_limit_store(request: pytest.FixtureRequest) -> AsyncIterator[RateLimitStore]:
    """A rate limit store of each backend."""
    store: RateLimitStore
    if request.param == "memory":
        store = memory_rate_limit_store()
    else:
        # The decisions are under test, not the 250 ms bound (the Redis tests have their own): 50 first calls
        # opening connections and loading the script at once took longer than that on a slow CI host.
        store = redis_rate_limit_store(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    yield store
    await store.close()
