"""One SQLite file's executor: the writer thread with its group commit and watchdog, and a reader thread.

The job store and the outbox on the same file both receive it (:mod:`gateway.stores.sqlite`,
:mod:`gateway.stores.sqlite_outbox`). One thread owns the writing connection, so the event loop never blocks
on disk and writes are serialised without locks of our own. Writes that queue up while a transaction is
being written share the next one (group commit): one ``COMMIT`` for the batch, and every waiting caller is
answered only after that commit; if any write of the batch fails half-way, the whole batch is rolled back
and refused. ``synchronous=NORMAL`` in WAL mode makes an acknowledged event survive a process crash; a power
loss may lose the transactions since the last checkpoint (docs/durability.md).

Every call raises :class:`~gateway.model.StoreUnavailable` (store ``"job"``) when the file does not answer
within ``_CALL_TIMEOUT_SECONDS``; a :class:`~gateway.model.EventRefused` raised by ``work`` reaches the caller
and leaves the rest of its batch to commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from gateway.config import SQLITE_BUSY_TIMEOUT_SECONDS
from gateway.model import EventRefused, StoreUnavailable
from gateway.stores import migrations
from gateway.stores.base import Outage
from gateway.stores.sqlite_wal import RESET_FRAMES, Checkpointer

__all__ = ("SqliteExecutor", "SqliteMigrations", "migrate", "numbered")

logger = logging.getLogger(__name__)

_MAX_BATCH = 256
_PARAMETER = re.compile(r"\$(\d+)")
_CALL_TIMEOUT_SECONDS = 15.0
"""Longer than SQLite's busy timeout (5 s by default) plus a batch: past it the caller gets a 503, not a hang."""
_WATCH_SECONDS = 1.0
"""How often the writer thread's calls are checked against their deadline while any is waiting."""


class _Op(NamedTuple):
    operation: str
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    write: bool
    """A write may share a transaction with the writes queued next to it."""
    deadline: float
    """The event loop's time past which the caller is answered 503 (``_CALL_TIMEOUT_SECONDS``)."""


class SqliteExecutor:
    """Runs work on one SQLite file: writes on the writer thread, reads on a reader thread (WAL)."""

    def __init__(
        self,
        path: str,
        *,
        wal_reset_frames: int = RESET_FRAMES,
        busy_timeout_seconds: float = SQLITE_BUSY_TIMEOUT_SECONDS,
    ) -> None:
        self._path = path
        self._busy_timeout_ms = round(busy_timeout_seconds * 1000)
        """How long each connection waits for another's lock on the file (SQLite's ``busy_timeout``)."""
        self._wal_reset_frames = wal_reset_frames
        """The WAL's bound under sustained writes, in frames (see :mod:`gateway.stores.sqlite_wal`)."""
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader = _reader_thread()
        self._reader_db: sqlite3.Connection | None = None
        self._pending: list[_Op] = []
        """Operations waiting for the thread; handed over together, as one batch."""
        self._in_flight = False
        """Whether the thread is working on a batch (at most one at a time, so batches grow under load)."""
        self._batch: list[_Op] = []
        """The operations the thread is working on."""
        self._watchdog: asyncio.TimerHandle | None = None
        """Checks deadlines while operations wait: one timer for all of them, not one per call."""
        self._abandoned: dict[asyncio.Future[Any], asyncio.Future[Any]] = {}
        """Writes whose caller was cancelled but still waits for the answer (see ``finish``): the
        original future (cancelled) and the one the caller waits on now."""
        self._writes = Outage("job store writes", logger)
        self._reads = Outage("job store reads", logger)

    async def open(self, *, apply_migrations: bool = True) -> None:
        """Start the writer thread and connect (bringing the schema up to date unless told not to)."""
        self._loop = asyncio.get_running_loop()
        connected: asyncio.Future[sqlite3.Connection] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(apply_migrations, connected), name="gateway-sqlite", daemon=True
        )
        self._thread.start()
        try:
            await connected
        except sqlite3.Error as error:
            raise StoreUnavailable("job", "open") from error

    async def close(self) -> None:
        """Finish the batch being written, stop the thread, and refuse what was still waiting."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            self._queue.put(None)
            await asyncio.to_thread(thread.join)
        waiting, self._pending = self._pending, []
        _settle([(self._abandoned.get(op.future, op.future), None, StoreUnavailable("job", "close")) for op in waiting])
        if self._watchdog is not None:  # nothing waits any more (and a reopened store may run on another loop)
            self._watchdog.cancel()
            self._watchdog = None
        if self._reader_db is not None:
            await asyncio.get_running_loop().run_in_executor(self._reader, self._reader_db.close)
            self._reader_db = None
        self._reader.shutdown(wait=False)
        self._reader = _reader_thread()  # a fresh one (no thread until used), so the store can be reopened

    async def run(self, operation: str, work: Callable[[sqlite3.Connection], Any], *, write: bool = True) -> Any:
        """Run ``work``: a write joins the writer thread's next transaction, a read runs on the reader
        thread. Answers what ``work`` answers; raises StoreUnavailable as :meth:`submit` does."""
        if write:
            return await self.submit(operation, work, write=True)
        return await self.read(operation, work)

    async def execute(self, operation: str, sql: str, *params: Any) -> int:
        """Run one statement as a write (:meth:`run`); the number of rows it wrote. ``sql`` numbers its
        parameters as PostgreSQL does (``$1``, ``$2``...)."""
        statement = numbered(sql)
        changed: int = await self.submit(operation, lambda db: db.execute(statement, params).rowcount, write=True)
        return changed

    async def fetch(self, operation: str, sql: str, *params: Any) -> list[Any]:
        """Run one query as a read (:meth:`read`); its rows. ``sql`` numbers its parameters as
        PostgreSQL does (``$1``, ``$2``...)."""
        statement = numbered(sql)
        rows: list[Any] = await self.read(operation, lambda db: db.execute(statement, params).fetchall())
        return rows

    async def read(self, operation: str, run: Callable[[sqlite3.Connection], Any]) -> Any:
        """Reads run on a reader thread with its own connection (WAL lets it read while the writer
        writes), so the read API never queues behind, or slows, the ingest path."""
        if self._thread is None:
            raise StoreUnavailable("job", operation)
        if self._path == ":memory:":  # another connection would open another, empty, database
            return await self.submit(operation, run)
        return await _answer(operation, self._read_within_deadline(run), self._reads)

    async def _read_within_deadline(self, run: Callable[[sqlite3.Connection], Any]) -> Any:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a result that arrives in the same
        # pass of the loop as a cancellation and drops the cancellation, so a live stream closed by its
        # client while its producer read went on (and held its slot) until shutdown.
        async with asyncio.timeout(_CALL_TIMEOUT_SECONDS):
            return await asyncio.get_running_loop().run_in_executor(self._reader, self._with_reader, run)

    def _with_reader(self, run: Callable[[sqlite3.Connection], Any]) -> Any:
        """On the reader thread: its connection, opened on first use."""
        if self._reader_db is None:
            self._reader_db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._reader_db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return run(self._reader_db)

    async def submit(
        self,
        operation: str,
        run: Callable[[sqlite3.Connection], Any],
        *,
        write: bool = False,
        finish: bool = False,
        own_transaction: bool = False,
    ) -> Any:
        """Queue ``run`` for the writer thread and await its answer. With ``finish``, a cancelled caller
        still waits for it (the thread commits it anyway), as :func:`~gateway.stores.base.to_the_end`
        does, but without a task or a shield on the way: either, once per webhook, slowed group commit's
        p99 (docs/benchmark.md). ``own_transaction``: ``run`` writes, in a transaction it opens and ends
        itself."""
        # A probe's failure is readiness's to report (/readyz), not an outage of the webhooks' writes.
        outage = None if own_transaction else self._writes if write else self._reads
        if self._loop is None or self._thread is None:
            raise StoreUnavailable("job", operation)
        future = self._loop.create_future()
        self._pending.append(_Op(operation, run, future, write, self._loop.time() + _CALL_TIMEOUT_SECONDS))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(_WATCH_SECONDS, self._watch)
        if not self._in_flight and len(self._pending) == 1:
            # Hand over at the end of this loop iteration, so requests arriving meanwhile join the batch.
            self._loop.call_soon(self._hand_over)
        interrupted = 0
        waiter = future
        try:
            while True:
                try:
                    return await _answer(operation, waiter, outage)
                except asyncio.CancelledError:
                    if not finish:
                        raise
                    interrupted += 1
                    if waiter.done() and not waiter.cancelled():
                        return await _answer(operation, waiter, outage)  # answered in the same pass as the cancel
                    # The thread commits the write whatever happens to this caller: wait for its answer
                    # on a new future (the cancellation cancelled the last one), which _settle completes.
                    waiter = self._abandoned[future] = self._loop.create_future()
        finally:
            if interrupted:
                self._abandoned.pop(future, None)
                task = asyncio.current_task()
                for _ in range(interrupted if task is not None else 0):
                    task.uncancel()  # type: ignore[union-attr]

    def _hand_over(self) -> None:
        if self._in_flight or not self._pending or self._thread is None:
            return  # busy, idle, or closing (close() refuses what is left)
        batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
        self._in_flight = True
        self._batch = batch
        self._queue.put(batch)

    def _settle(self, settled: list[Settled]) -> None:
        """On the event loop: answer a finished batch, then hand over what queued up meanwhile."""
        self._in_flight = False
        self._batch = []
        if self._abandoned:
            settled = [(self._abandoned.get(future, future), result, error) for future, result, error in settled]
        _settle(settled)
        self._hand_over()

    def _watch(self) -> None:
        """Answer 503 to every caller whose deadline passed (the thread is stuck on a batch); look again
        in a second while any caller still waits. The thread may still commit such a write later: the
        sender's retry is then answered ``duplicate``."""
        assert self._loop is not None
        self._watchdog = None
        now = self._loop.time()
        waiting = [(op, self._abandoned.get(op.future, op.future)) for op in (*self._batch, *self._pending)]
        waiting = [(op, waiter) for op, waiter in waiting if not waiter.done()]
        late = [(op, waiter) for op, waiter in waiting if op.deadline <= now]
        for op, waiter in late:
            waiter.set_exception(StoreUnavailable("job", op.operation))
        if late:
            logger.error("job store: %d calls got no answer within %s s", len(late), _CALL_TIMEOUT_SECONDS)
        if len(late) < len(waiting):
            self._watchdog = self._loop.call_later(_WATCH_SECONDS, self._watch)

    # Everything below runs on the writer thread.

    def _serve(self, apply_migrations: bool, connected: asyncio.Future[sqlite3.Connection]) -> None:
        assert self._loop is not None
        # An in-memory database has no WAL to checkpoint.
        checkpointer = (
            None if self._path == ":memory:" else Checkpointer(self._path, reset_frames=self._wal_reset_frames)
        )
        db: sqlite3.Connection | None = None
        try:
            db = _connect(self._path, apply_migrations, self._busy_timeout_ms)
            if checkpointer is not None:
                checkpointer.configure(db)
        except sqlite3.Error as error:
            if db is not None:
                db.close()
            self._loop.call_soon_threadsafe(_settle, [cast("Settled", (connected, None, error))])
            return
        if checkpointer is not None:
            checkpointer.start()
        self._loop.call_soon_threadsafe(_settle, [cast("Settled", (connected, db, None))])
        try:
            while (batch := self._queue.get()) is not None:
                if checkpointer is not None:
                    checkpointer.before_write(db)
                try:
                    settled = _execute(db, batch)
                except BaseException as error:  # whatever happens, every waiting caller gets an answer
                    settled = [(op.future, None, error) for op in batch]
                self._loop.call_soon_threadsafe(self._settle, settled)
        finally:
            if checkpointer is not None:
                checkpointer.stop()
            db.close()


def numbered(sql: str) -> str:
    """``sql`` with PostgreSQL's parameters (``$1``) written as SQLite's (``?1``).

    Every ``$`` followed by digits is rewritten, inside string literals and comments too: a shared
    statement holds no such text (values go in as parameters)."""
    return _PARAMETER.sub(r"?\1", sql)


def _use_wal(db: sqlite3.Connection, busy_timeout_seconds: float) -> None:
    """Put the file in WAL mode (a no-op once it is). Two connections switching a new file at the same
    moment: SQLite refuses one at once ("database is locked") instead of making it wait, so it is tried
    again until ``busy_timeout_seconds`` have passed, as a busy lock would be waited for."""
    deadline = time.monotonic() + busy_timeout_seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _reader_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite-reader")


def _connect(path: str, apply_migrations: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    _use_wal(db, busy_timeout_ms / 1000)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    if apply_migrations:
        try:
            # The writer thread has no event loop: this one lives only while the migrations run.
            asyncio.run(migrations.run(SqliteMigrations(db)))
        except BaseException:
            db.close()
            raise
    return db


Settled = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _as_is(value: bytes | None) -> bytes | None:
    return value


# sqlite3 binds None and bytes as they are, but only after asking its adapter registry for them: a miss that
# builds and drops an AttributeError for each such parameter. Registering the identity for both makes that
# lookup a hit; the same NULLs and blobs are bound. The registry is the process's: every sqlite3 connection
# shares it, and an adapter registered for these two types before this import is replaced (none of the
# gateway's dependencies registers one), one registered after replaces this.
sqlite3.register_adapter(type(None), _as_is)
sqlite3.register_adapter(bytes, _as_is)


def _execute(db: sqlite3.Connection, batch: list[_Op]) -> list[Settled]:
    """Run a batch in order; consecutive writes share one transaction (group commit)."""
    settled: list[Settled] = []
    position = 0
    while position < len(batch):
        if not batch[position].write:
            op = batch[position]
            try:
                settled.append((op.future, op.run(db), None))
            except Exception as error:
                settled.append((op.future, None, error))
            position += 1
            continue
        end = position
        while end < len(batch) and batch[end].write:
            end += 1
        settled += _transaction(db, batch[position:end])
        position = end
    return settled


def _transaction(db: sqlite3.Connection, writes: list[_Op]) -> list[Settled]:
    """One transaction for ``writes``; their answers stand only once it committed."""
    answers: list[Settled] = []
    try:
        db.execute("BEGIN IMMEDIATE")
        for op in writes:
            try:
                answers.append((op.future, op.run(db), None))
            except EventRefused as error:  # refused before it wrote anything; the others go on
                answers.append((op.future, None, error))
        db.execute("COMMIT")
    except Exception as error:
        # Disk, lock, corruption, or a write that failed half-way: nothing of the batch is recorded,
        # and every writer hears so (its sender retries).
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        return [(op.future, None, error) for op in writes]
    return answers


async def _answer(operation: str, pending: Awaitable[Any], outage: Outage | None) -> Any:
    """Await a store call (bounded by its deadline: the watchdog, or ``asyncio.timeout``); every failure becomes
    :class:`StoreUnavailable` (a 503). ``outage`` hears of the outcome (it logs a change of state)."""
    try:
        result = await pending
    except (EventRefused, StoreUnavailable):
        raise
    except TimeoutError:
        if outage is not None:
            outage.failed(operation, f"no answer within {_CALL_TIMEOUT_SECONDS} s")
        raise StoreUnavailable("job", operation) from None
    except sqlite3.Error as error:
        if outage is not None:
            outage.failed(operation, str(error))
        raise StoreUnavailable("job", operation) from error
    except Exception as error:
        # Not the database's doing: a bug. Still refused as unavailable (nothing was committed),
        # never a 500, and logged with its traceback so it gets fixed.
        logger.exception("job store %s failed unexpectedly", operation)
        raise StoreUnavailable("job", operation) from error
    if outage is not None:
        outage.worked()
    return result


def _settle(settled: list[Settled]) -> None:
    """On the event loop: hand every waiting caller its answer (unless it stopped waiting)."""
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class SqliteMigrations:
    """The migration runner's view of a SQLite connection (:class:`gateway.stores.migrations.Target`). SQLite
    needs no lock of its own: ``BEGIN IMMEDIATE`` serialises each migration's transaction across processes.
    Its calls block (SQLite is a local file), whichever thread runs them."""

    dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def locked(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    async def applied_versions(self) -> set[int]:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        return {version for (version,) in self._db.execute("SELECT version FROM schema_migrations")}

    async def apply(self, migration: migrations.Migration) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            done = db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone()
            if done is None:
                for statement in migrations.statements(migration.sql):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, datetime.now(UTC).isoformat(timespec="microseconds")),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return done is None


async def migrate(path: str) -> list[int]:
    """Apply pending migrations to the SQLite file at ``path``; return the versions applied. Blocks the
    loop while it writes (the ``gateway migrate`` command has nothing else to do)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        _use_wal(db, SQLITE_BUSY_TIMEOUT_SECONDS)
        return await migrations.run(SqliteMigrations(db))
    finally:
        db.close()
