"""The embedded job store: SQLite in WAL mode, driven from one dedicated thread.

Every call runs on a single worker thread that owns the connection, so the event loop never blocks on
disk and writes are serialised without locks of our own. ``synchronous=NORMAL`` in WAL mode makes an
acknowledged event survive a process crash; a power loss may lose the last few transactions before the
next checkpoint (documented in the README).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import msgspec

from gateway.ingest.transition import Transition, decide
from gateway.model import (
    Applied,
    HistoryEntry,
    InProgress,
    Job,
    JobEvent,
    JobPage,
    JobSummary,
    KindConflict,
    Outcome,
    Status,
)
from gateway.payloads import Metadata
from gateway.stores import migrations
from gateway.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("SqliteJobStore", "migrate")

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_metadata_decoder = msgspec.json.Decoder(Metadata)

_JOB_COLUMNS = "seq, job_id, kind, status, result, metadata, error_message, created_at, updated_at, completed_at"


class SqliteJobStore:
    """:class:`~gateway.stores.base.JobStore` on one SQLite file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        self._db: sqlite3.Connection | None = None

    async def open(self, *, apply_migrations: bool = True) -> None:
        """Connect (and bring the schema up to date unless told not to)."""
        await self._run("open", self._connect, apply_migrations)

    async def close(self) -> None:
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run("ping", self._query, "SELECT 1", ())

    async def apply(self, event: JobEvent) -> Applied:
        return await self._run("apply", self._apply, event)

    async def status_of(self, job_id: str) -> Status | None:
        rows = await self._run("status_of", self._query, "SELECT status FROM jobs WHERE job_id = ?", (job_id,))
        return Status(rows[0][0]) if rows else None

    async def get(self, job_id: str) -> Job | None:
        return await self._run("get", self._get, job_id)

    async def in_progress(self) -> list[InProgress]:
        return await self._run("in_progress", self._in_progress)

    async def list_jobs(self, *, kind: str | None, status: Status | None, limit: int, cursor: int | None) -> JobPage:
        return await self._run("list", self._list, kind, status, limit, cursor)

    async def _run(self, operation: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except sqlite3.Error as error:
            logger.error("job store %s failed: %s", operation, error)
            raise StoreUnavailable("job", operation) from error

    # Everything below runs on the store's own thread.

    def _connect(self, apply_migrations: bool) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        if apply_migrations:
            _migrate(db)
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("job store is not open")
        return self._db

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

    def _apply(self, event: JobEvent) -> Applied:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            applied = self._apply_in_transaction(db, event)
        except sqlite3.IntegrityError:
            # The event's key or delivery id is already recorded: the database's word is final.
            db.execute("ROLLBACK")
            current = db.execute("SELECT status FROM jobs WHERE job_id = ?", (event.job_id,)).fetchone()
            return Applied(outcome=Outcome.DUPLICATE, status=Status(current[0]) if current else event.status)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return applied

    def _apply_in_transaction(self, db: sqlite3.Connection, event: JobEvent) -> Applied:
        row = db.execute(
            "SELECT seq, kind, status, metadata, created_at FROM jobs WHERE job_id = ?", (event.job_id,)
        ).fetchone()
        if row is not None and row[1] != event.kind:
            raise KindConflict(event.job_id, row[1])
        previous = Status(row[2]) if row is not None else None
        transition = decide(previous, event.status)
        received = _iso(event.received_at)
        completed = received if transition.moves and event.status.terminal else None
        result = bytes(event.result).decode() if event.result is not None else None
        if row is None:
            seq, metadata, first_seen = None, event.metadata, received
            seq = db.execute(
                "INSERT INTO jobs (job_id, kind, status, result, metadata, error_message,"
                " created_at, updated_at, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.job_id,
                    event.kind,
                    event.status,
                    result,
                    _json(metadata),
                    event.error_message,
                    received,
                    received,
                    completed,
                ),
            ).lastrowid
        else:
            seq, first_seen = row[0], row[4]
            metadata = _metadata_decoder.decode(row[3]) if row[3] is not None else None
            if transition.outcome is Outcome.APPLIED:
                metadata = _merge_metadata(metadata, event.metadata)
                db.execute(
                    "UPDATE jobs SET status = ?, updated_at = ?, metadata = ?,"
                    " result = coalesce(?, result), error_message = coalesce(?, error_message),"
                    " completed_at = coalesce(?, completed_at) WHERE seq = ?",
                    (event.status, received, _json(metadata), result, event.error_message, completed, seq),
                )
        if transition is Transition.CONTRADICTED:
            logger.warning(
                "job %s got %s after terminal %s: kept in history as stale (a backend bug?)",
                event.job_id,
                event.status,
                previous,
            )
        event_id = db.execute(
            "INSERT INTO job_events (job_seq, status, timestamp, received_at, outcome, event_key,"
            " delivery_id, metadata, error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                event.status,
                _iso(event.timestamp),
                received,
                transition.outcome,
                event.key,
                event.delivery_id,
                _json(event.metadata),
                event.error_message,
            ),
        ).lastrowid
        status = event.status if transition.outcome is Outcome.APPLIED else previous
        assert status is not None  # a job without a previous status is created by this event
        return Applied(
            outcome=transition.outcome,
            status=status,
            previous=previous,
            event_id=event_id,
            moved=transition.moves,
            model=metadata.model_name if metadata is not None else None,
            first_seen_at=datetime.fromisoformat(first_seen),
        )

    def _in_progress(self) -> list[InProgress]:
        rows = (
            self._conn()
            .execute(
                "SELECT kind, status, count(*), min(created_at) FROM jobs"
                " WHERE status NOT IN ('completed', 'failed') GROUP BY kind, status"
            )
            .fetchall()
        )
        return [
            InProgress(kind=kind, status=Status(status), count=count, oldest_created_at=datetime.fromisoformat(oldest))
            for kind, status, count, oldest in rows
        ]

    def _get(self, job_id: str) -> Job | None:
        db = self._conn()
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()  # noqa: S608
        if row is None:
            return None
        events = db.execute(
            "SELECT id, status, timestamp, received_at, outcome, delivery_id, error_message, metadata"
            " FROM job_events WHERE job_seq = ? ORDER BY id",
            (row[0],),
        ).fetchall()
        history = [
            HistoryEntry(
                id=e[0],
                status=Status(e[1]),
                timestamp=datetime.fromisoformat(e[2]),
                received_at=datetime.fromisoformat(e[3]),
                outcome=Outcome(e[4]),
                stale=e[4] == Outcome.STALE,
                delivery_id=e[5],
                error_message=e[6],
                metadata=_metadata_decoder.decode(e[7]) if e[7] is not None else None,
            )
            for e in events
        ]
        return Job(**_job_fields(row), history=history)

    def _list(self, kind: str | None, status: Status | None, limit: int, cursor: int | None) -> JobPage:
        clauses, params = [], []
        for clause, value in (("kind = ?", kind), ("status = ?", status), ("seq < ?", cursor)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = (
            self._conn()
            .execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (*params, limit + 1),
            )
            .fetchall()
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return JobPage(
            jobs=[JobSummary(**_job_fields(row)) for row in rows], next_cursor=str(rows[-1][0]) if more else None
        )


def _job_fields(row: Any) -> dict[str, Any]:
    return {
        "job_id": row[1],
        "kind": row[2],
        "status": Status(row[3]),
        "result": msgspec.Raw(row[4].encode()) if row[4] is not None else None,
        "metadata": _metadata_decoder.decode(row[5]) if row[5] is not None else None,
        "error_message": row[6],
        "created_at": datetime.fromisoformat(row[7]),
        "updated_at": datetime.fromisoformat(row[8]),
        "completed_at": datetime.fromisoformat(row[9]) if row[9] is not None else None,
    }


def _merge_metadata(stored: Metadata | None, incoming: Metadata | None) -> Metadata | None:
    """Fields the event carries override the stored ones; fields it leaves out are kept."""
    if incoming is None or stored is None:
        return incoming or stored
    return Metadata(
        model_name=incoming.model_name or stored.model_name,
        generation_time_seconds=(
            incoming.generation_time_seconds
            if incoming.generation_time_seconds is not None
            else stored.generation_time_seconds
        ),
    )


def _json(value: object) -> str | None:
    return _encode(value).decode() if value is not None else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _migrate(db: sqlite3.Connection) -> list[int]:
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied: list[int] = []
    for migration in migrations.load("sqlite"):
        db.execute("BEGIN IMMEDIATE")
        try:
            done = db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone()
            if done is None:
                for statement in migrations.statements(migration.sql):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _iso(datetime.now(UTC))),
                )
                applied.append(migration.version)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return applied


def migrate(path: str) -> list[int]:
    """Apply pending migrations to the SQLite file at ``path``; return the versions applied."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        return _migrate(db)
    finally:
        db.close()
