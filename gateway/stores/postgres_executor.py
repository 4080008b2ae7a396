"""One PostgreSQL database's executor: the asyncpg pool every call of its job store and its outbox runs on,
and the group commit that writes the job store's events in batches (:class:`GroupCommit`).

Every call is bounded by one timeout (waiting for a pooled connection included) and any failure of the
driver, the network or the server is :class:`~gateway.model.StoreUnavailable` (store ``"job"``): the
webhook gets 503, never half-applied. The pool replaces broken connections by itself, so the store heals
when PostgreSQL comes back. Migrations run under an advisory lock, so replicas starting together migrate
one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import asyncpg

from gateway.model import EventRefused, StoreUnavailable
from gateway.stores import migrations
from gateway.stores.base import Outage, to_the_end

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from asyncpg.pool import PoolConnectionProxy

    Connection = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

__all__ = ("PROBE", "GroupCommit", "PostgresExecutor", "PostgresMigrations", "migrate")

logger = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")
Answer = TypeVar("Answer")

_MAX_BATCH = 256

_MIGRATION_LOCK = 0x6761746577617901  # pg_advisory_lock key: replicas starting together migrate one at a time

PROBE = "probe"
"""The readiness probe's operation: its failure is readiness's to report (/readyz), not an outage."""
_READS = frozenset(
    {"ping", "recorded", "get", "list", "events", "stats", "status_of", "in_progress", "outbox_list", "outbox_backlog"}
    | {"outbox_disabled"}
)
"""The operations that only read; every other one (webhooks, registration, pruning, the outbox's) writes."""


class PostgresExecutor:
    """The pool of one database, ``pool_size`` connections at most per process."""

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 2.0) -> None:
        self._url = url
        self._pool_size = pool_size
        self.timeout = timeout
        """Seconds any call may take, waiting for a connection included."""
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._groups: list[GroupCommit[Any, Any]] = []
        """Written to the end before the pool closes."""
        self._writes = Outage("job store writes", logger)
        self._reads = Outage("job store reads", logger)
        """Logged when they start failing and when they work again, not per call; apart, since a database
        that refuses writes (full disk, read-only) may still answer reads."""

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self, *, apply_migrations: bool = True) -> None:
        """Create the pool (connections are opened on demand) and bring the schema up to date if asked."""
        try:
            async with asyncio.timeout(self.timeout * 5):
                self._pool = await asyncpg.create_pool(
                    self._url,
                    min_size=0,
                    max_size=self._pool_size,
                    timeout=self.timeout,  # connecting
                    command_timeout=self.timeout,
                    max_inactive_connection_lifetime=60,
                    reset=_reset,
                )
                if apply_migrations:
                    async with self._pool.acquire() as connection:
                        await migrations.run(PostgresMigrations(connection))
        except Exception as error:
            raise StoreUnavailable("job", "open") from error

    def group_commit(
        self, operation: str, work: Callable[[Connection, Sequence[Item]], Awaitable[Sequence[Answer | EventRefused]]]
    ) -> GroupCommit[Item, Answer]:
        """A group commit of ``operation`` on this pool, whose batches ``work`` writes; :meth:`close` waits
        for the batches it has queued."""
        group: GroupCommit[Item, Answer] = GroupCommit(self, operation, work)
        self._groups.append(group)
        return group

    async def close(self) -> None:
        """Write (or refuse) what the group commits queued, then close the pool (terminating its
        connections if the server does not answer within the timeout)."""
        for group in self._groups:
            await group.written()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:  # an unreachable server: drop the connections rather than wait on them
                pool.terminate()

    async def execute(self, operation: str, sql: str, *params: Any) -> int:
        """Run one statement, as :meth:`run` runs work; the number of rows it wrote."""
        status = await self.run(operation, lambda db: db.execute(sql, *params))
        return int(status.rpartition(" ")[2])

    async def fetch(self, operation: str, sql: str, *params: Any) -> list[asyncpg.Record]:
        """Run one query, as :meth:`run` runs work; its rows."""
        return await self.run(operation, lambda db: db.fetch(sql, *params))

    async def run(
        self, operation: str, work: Callable[[Connection], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """Run ``work`` on a pooled connection within the timeout (or by the loop time ``deadline``); any
        failure but a :class:`~gateway.model.EventRefused` is StoreUnavailable."""
        # A probe's failure is readiness's to report (/readyz), not an outage of the webhooks' writes.
        outage = None if operation == PROBE else self._reads if operation in _READS else self._writes
        if self._pool is None:
            raise StoreUnavailable("job", operation)
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline), self._pool.acquire() as connection:
                result = await work(connection)
        except EventRefused:
            raise
        except Exception as error:
            # Refused connection, server restart, timeout, lost connection, full disk, read-only database:
            # all mean "retry later". Only the error's type is logged: a message may quote a row's values.
            if outage is not None:
                outage.failed(operation, type(error).__name__)
            raise StoreUnavailable("job", operation) from error
        if outage is not None:
            outage.worked()
        return result


class _Queued(NamedTuple):
    item: Any
    future: asyncio.Future[Any]
    deadline: float
    """The event loop's time by which it is answered: its arrival plus the executor's timeout."""


class GroupCommit(Generic[Item, Answer]):
    """Calls of one operation written together: the items submitted while a batch is written make the next
    batch, written by ``work`` in one call on one connection (so batches grow with the load and stay at one
    item when idle). ``work`` answers each item of its batch in order; an
    :class:`~gateway.model.EventRefused` among its answers refuses that item only."""

    def __init__(
        self,
        executor: PostgresExecutor,
        operation: str,
        work: Callable[[Connection, Sequence[Item]], Awaitable[Sequence[Answer | EventRefused]]],
    ) -> None:
        self._executor = executor
        self._operation = operation
        self._work = work
        self._queued: list[_Queued] = []
        """Items waiting for the next batch."""
        self._writer: asyncio.Task[None] | None = None
        """The task writing batches, one at a time; ``None`` while nothing waits."""

    async def submit(self, item: Item) -> Answer:
        """Write ``item`` in the next batch and answer it, or raise what ``work`` refused it with; raises
        StoreUnavailable when the batch fails or the item waited the executor's timeout. A caller cancelled
        meanwhile (the shutdown deadline) still gets the batch's truthful answer."""
        if not self._executor.is_open:
            raise StoreUnavailable("job", self._operation)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._queued.append(_Queued(item, future, loop.time() + self._executor.timeout))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_batches())
        return await to_the_end(future)

    async def written(self) -> None:
        """Wait until every item queued so far is answered."""
        if self._writer is not None:
            await asyncio.shield(self._writer)  # a caller giving up on close() must not cut a batch off

    async def _write_batches(self) -> None:
        """Write what queued up, a batch at a time, until nothing waits.

        Every item is answered within the executor's timeout of its arrival, as any other call: one that
        waited that long already is refused unwritten, and a batch must commit by its oldest item's
        deadline. Whatever ends this task, every waiting caller gets an answer."""
        batch: list[_Queued] = []
        try:
            while self._queued:
                now = asyncio.get_running_loop().time()
                expired = 0
                while expired < len(self._queued) and self._queued[expired].deadline <= now:
                    expired += 1
                self._refuse(self._queued[:expired])
                batch, self._queued = self._queued[expired : expired + _MAX_BATCH], self._queued[expired + _MAX_BATCH :]
                if not batch:
                    break
                try:
                    answers = await self._executor.run(
                        self._operation, self._writing([queued.item for queued in batch]), deadline=batch[0].deadline
                    )
                except StoreUnavailable as error:
                    self._refuse(batch, error.__cause__)
                    continue
                for queued, answer in zip(batch, answers, strict=True):
                    if isinstance(answer, EventRefused):
                        queued.future.set_exception(answer)
                    else:
                        queued.future.set_result(answer)
        finally:
            self._writer = None
            waiting, self._queued = self._queued, []
            self._refuse([*batch, *waiting])

    def _writing(self, items: list[Item]) -> Callable[[Connection], Awaitable[Sequence[Answer | EventRefused]]]:
        """The work of writing ``items`` on the connection the executor gives it."""
        return lambda db: self._work(db, items)

    def _refuse(self, waiting: Sequence[_Queued], cause: BaseException | None = None) -> None:
        """Answer items that will not be written (the database failed, or they waited too long) with a 503;
        ``cause``: the database's error, the 503's ``__cause__`` as for any other call."""
        for queued in waiting:
            if not queued.future.done():
                refusal = StoreUnavailable("job", self._operation)
                refusal.__cause__ = cause
                queued.future.set_exception(refusal)


async def _reset(connection: Connection) -> None:
    """Roll back a transaction a cancelled call left open; otherwise nothing (the gateway keeps no session
    state), which saves asyncpg's default reset, a round trip per release."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class PostgresMigrations:
    """The migration runner's view of one connection (:class:`gateway.stores.migrations.Target`): it holds
    a session advisory lock while it migrates, so replicas starting together migrate one at a time."""

    dialect = "postgresql"

    def __init__(self, db: Connection) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        await self._db.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            yield
        finally:
            await self._db.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    async def applied_versions(self) -> set[int]:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        return {row["version"] for row in await self._db.fetch("SELECT version FROM schema_migrations")}

    async def apply(self, migration: migrations.Migration) -> bool:
        async with self._db.transaction():
            done = await self._db.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", migration.version)
            if done is not None:
                return False
            await self._db.execute(migration.sql)  # several statements: the simple query protocol runs them all
            await self._db.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
            )
            return True


async def migrate(url: str) -> list[int]:
    """Apply pending migrations to the PostgreSQL database at ``url``; return the versions applied."""
    db = await asyncpg.connect(url, timeout=30)
    try:
        return await migrations.run(PostgresMigrations(db))
    finally:
        await db.close()
