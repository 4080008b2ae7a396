"""The embedded job store: SQLite in WAL mode, its writes grouped on the file's writer thread.

Every call runs on the file's :class:`~gateway.stores.sqlite_executor.SqliteExecutor` (which the outbox on
the same file shares): an event is applied in the writer thread's next transaction, with its outbox rows,
and answered once that transaction committed.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.config import SQLITE_BUSY_TIMEOUT_SECONDS
from gateway.model import (
    EventResult,
    InProgress,
    Job,
    JobEvent,
    JobPage,
    JobStats,
    JobSummary,
    KindConflict,
    Outcome,
    Status,
    StreamEvent,
    Unregistered,
)
from gateway.outbox import current_traceparent
from gateway.registration import Registered, RegisterOutcome, differing_fields
from gateway.stores import rows as rows_
from gateway.stores import sqlite_outbox
from gateway.stores.queries import EVENT_COLUMNS, decode_context, events_where, job_stats, jobs_where
from gateway.stores.records import (
    answer,
    decode_metadata,
    delivery_conflict,
    merge_metadata,
    owner_conflict,
    recorded_status,
    to_json,
)
from gateway.stores.sqlite_executor import SqliteExecutor
from gateway.stores.sqlite_wal import RESET_FRAMES
from gateway.timestamps import utc_iso
from gateway.transition import decide

if TYPE_CHECKING:
    from gateway.outbox import OutboxWriter
    from gateway.registration import Registration
    from gateway.stores.queries import JobQuery

__all__ = ("SqliteJobStore",)

logger = logging.getLogger(__name__)

_APPLIED = Outcome.APPLIED  # read once: an Enum class attribute goes through EnumType.__getattr__'s hook


_PROBE_FILLER = "0" * 8192
"""The readiness probe's row spans a few pages: a file that cannot grow (``SQLITE_FULL``) refuses it."""


class SqliteJobStore:
    """:class:`~gateway.stores.base.JobStore` on one SQLite file."""

    decides_duplicates = False
    """The pipeline claims in the process's memory first (no round trip)."""

    def __init__(
        self,
        path: str,
        outbox: OutboxWriter | None = None,
        *,
        require_registered: bool = False,
        wal_reset_frames: int = RESET_FRAMES,
        busy_timeout_seconds: float = SQLITE_BUSY_TIMEOUT_SECONDS,
    ) -> None:
        self.executor = SqliteExecutor(
            path, wal_reset_frames=wal_reset_frames, busy_timeout_seconds=busy_timeout_seconds
        )
        """The file's writer and reader threads, shared with the outbox on the same file."""
        self._outbox = outbox
        """Where applied events are queued for delivery; ``None``: forwarding is off."""
        self._require_registered = require_registered
        """``GATEWAY_REQUIRE_REGISTERED_JOBS``: refuse events of jobs the app did not register."""

    async def open(self, *, apply_migrations: bool = True) -> None:
        """Start the file's executor (bringing the schema up to date unless told not to)."""
        await self.executor.open(apply_migrations=apply_migrations)

    async def close(self) -> None:
        """Finish the batch being written, stop the executor, and refuse what was still waiting."""
        await self.executor.close()

    async def ping(self) -> None:
        await self.executor.submit("ping", lambda db: db.execute("SELECT 1").fetchone())

    async def probe_write(self) -> None:
        """A write committed in a transaction of its own (never grouped with webhooks', which a failing
        probe would otherwise take down with it)."""
        await self.executor.submit("probe", _probe, own_transaction=True)

    async def apply(self, event: JobEvent) -> EventResult:
        if self._outbox is None:
            result: EventResult = await self.executor.submit(
                "apply", lambda db: self._apply(db, event, None), write=True, finish=True
            )
            return result
        traceparent = current_traceparent()
        result = await self.executor.submit(
            "apply", lambda db: self._apply(db, event, traceparent), write=True, finish=True
        )
        if result.outcome is _APPLIED:
            self._outbox.on_written()
        return result

    async def status_of(self, job_id: str) -> Status | None:
        row = await self.executor.read(
            "status_of", lambda db: db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        )
        return Status(row[0]) if row else None

    async def recorded(self, event: JobEvent) -> Status | None:
        row = await self.executor.submit(
            "recorded",
            lambda db: db.execute(
                "SELECT (SELECT status FROM jobs WHERE job_id = ?),"
                " EXISTS (SELECT 1 FROM job_events WHERE event_key = ?),"
                " (SELECT job_id FROM job_events WHERE delivery_id = ?)",
                (event.job_id, event.key, event.delivery_id),
            ).fetchone(),
        )
        return recorded_status(event, row[0], bool(row[1]), row[2])

    async def get(self, job_id: str) -> Job | None:
        job: Job | None = await self.executor.read("get", lambda db: _get(db, job_id))
        return job

    async def in_progress(self) -> list[InProgress]:
        rows: list[InProgress] = await self.executor.read("in_progress", _in_progress)
        return rows

    async def list_jobs(self, query: JobQuery) -> JobPage:
        page: JobPage = await self.executor.read("list", lambda db: _list(db, query))
        return page

    async def register(self, registration: Registration, now: datetime) -> Registered:
        result: Registered = await self.executor.submit(
            "register", lambda db: _register(db, registration, now), write=True
        )
        return result

    async def events_after(
        self, after: int, limit: int, *, job_id: str | None = None, user_id: str | None = None
    ) -> list[StreamEvent]:
        events: list[StreamEvent] = await self.executor.read(
            "events", lambda db: _events_after(db, after, limit, job_id, user_id)
        )
        return events

    async def last_event_id(self) -> int:
        row = await self.executor.read("events", lambda db: db.execute("SELECT max(id) FROM job_events").fetchone())
        return int(row[0] or 0)

    async def stats(self, since: datetime, until: datetime) -> JobStats:
        stats: JobStats = await self.executor.read("stats", lambda db: _stats(db, since, until))
        return stats

    async def prune_finished(self, before: datetime, limit: int) -> int:
        # A write like any other: one small transaction on the writer thread, between webhooks' batches.
        deleted: int = await self.executor.submit("prune", lambda db: _prune(db, _iso(before), limit), write=True)
        return deleted

    def _apply(self, db: sqlite3.Connection, event: JobEvent, traceparent: str | None) -> EventResult:
        """Decide the transition from the job as stored, then record the event and update the job.

        The event row is written first: if its key or delivery id is already recorded, the unique
        constraint refuses it before anything else was written, so the batch's transaction goes on.
        """
        row = db.execute(
            "SELECT kind, status, metadata, created_at, registered_at, sender FROM jobs WHERE job_id = ?",
            (event.job_id,),
        ).fetchone()
        # Ownership first: another sender learns nothing of the job (not even its kind) but that it is not its.
        owned = owner_conflict(event, row[5]) if row is not None else None
        if owned is not None:
            raise owned
        if row is not None and row[0] != event.kind:
            raise KindConflict(event.job_id, row[0])
        if self._require_registered and (row is None or row[4] is None):
            raise Unregistered(event.job_id)
        previous = Status(row[1]) if row is not None else None
        transition = decide(previous, event.status)
        applies = transition.applies
        received = _iso(event.received_at)
        try:
            event_id = db.execute(
                "INSERT INTO job_events (job_id, status, timestamp, received_at, outcome, event_key,"
                " delivery_id, metadata, error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.job_id,
                    str(event.status),  # an exact str: sqlite3 binds it without its adapter lookup
                    _iso(event.timestamp),
                    received,
                    str(transition.outcome),
                    event.key,
                    event.delivery_id,
                    to_json(event.metadata),
                    event.error_message,
                ),
            ).lastrowid
        except sqlite3.IntegrityError:
            # Already recorded: the database's word is final. Nothing was written, so a refusal leaves the
            # batch's transaction as it was.
            if event.delivery_id is not None:
                known = db.execute(
                    "SELECT EXISTS (SELECT 1 FROM job_events WHERE event_key = ?),"
                    " (SELECT job_id FROM job_events WHERE delivery_id = ?)",
                    (event.key, event.delivery_id),
                ).fetchone()
                conflict = delivery_conflict(event, bool(known[0]), known[1])
                if conflict is not None:
                    raise conflict from None
            return EventResult(outcome=Outcome.DUPLICATE, status=previous or event.status)
        completed = received if transition.moves and event.status.terminal else None
        result = bytes(event.result).decode() if event.result is not None else None
        if row is None:
            metadata, first_seen = event.metadata, received
            db.execute(
                "INSERT INTO jobs (job_id, kind, status, result, metadata, error_message,"
                " created_at, updated_at, completed_at, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.job_id,
                    event.kind,
                    str(event.status),
                    result,
                    to_json(metadata),
                    event.error_message,
                    received,
                    received,
                    completed,
                    event.sender,
                ),
            )
        else:
            first_seen = row[3]
            if row[5] is None and event.sender is not None:  # a job nobody claimed yet: this sender's now
                db.execute("UPDATE jobs SET sender = ? WHERE job_id = ?", (event.sender, event.job_id))
            metadata = decode_metadata(row[2])
            if applies:
                metadata = merge_metadata(metadata, event.metadata)
                db.execute(
                    "UPDATE jobs SET status = ?, updated_at = ?, metadata = ?,"
                    " result = coalesce(?, result), error_message = coalesce(?, error_message),"
                    " completed_at = coalesce(?, completed_at) WHERE job_id = ?",
                    (
                        str(event.status),
                        received,
                        to_json(metadata),
                        result,
                        event.error_message,
                        completed,
                        event.job_id,
                    ),
                )
        if self._outbox is not None and applies:
            assert event_id is not None  # an inserted row always has one
            sqlite_outbox.enqueue(db, self._outbox, event, event_id, traceparent)
        return answer(event, transition, previous, event_id, metadata, datetime.fromisoformat(first_seen))


def _probe(db: sqlite3.Connection) -> None:
    """On the writer thread: insert a job row of a few pages and delete it, committed; rolled back on any
    error. Its id has a space, which no job id has, and is unique: no real job is ever touched."""
    now = datetime.now(UTC).isoformat()
    db.execute("BEGIN IMMEDIATE")
    try:
        seq = db.execute(
            "INSERT INTO jobs (job_id, kind, status, result, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (f"readiness probe {uuid.uuid4().hex}", "probe", "pending", _PROBE_FILLER, now, now),
        ).lastrowid
        db.execute("DELETE FROM jobs WHERE seq = ?", (seq,))
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        raise


def _prune(db: sqlite3.Connection, before: str, limit: int) -> int:
    """Delete up to ``limit`` jobs finished before ``before`` (ISO-8601 UTC, so text order is time order)."""
    doomed = [
        row[0]
        for row in db.execute(
            "SELECT job_id FROM jobs WHERE status IN ('completed', 'failed', 'canceled') AND completed_at < ?"
            " ORDER BY seq LIMIT ?",
            (before, limit),
        )
    ]
    if doomed:
        marks = ",".join("?" * len(doomed))
        db.execute(f"DELETE FROM job_events WHERE job_id IN ({marks})", doomed)  # noqa: S608
        db.execute(f"DELETE FROM jobs WHERE job_id IN ({marks})", doomed)  # noqa: S608
    return len(doomed)


def _in_progress(db: sqlite3.Connection) -> list[InProgress]:
    rows = db.execute(
        "SELECT kind, status, count(*), min(created_at) FROM jobs"
        " WHERE status IN ('pending', 'initializing', 'generating', 'saving') GROUP BY kind, status"
    ).fetchall()
    return [rows_.in_progress(row, rows_.from_text) for row in rows]


def _get(db: sqlite3.Connection, job_id: str) -> Job | None:
    row = db.execute(f"SELECT {rows_.JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()  # noqa: S608
    if row is None:
        return None
    events = db.execute(
        f"SELECT {rows_.HISTORY_COLUMNS} FROM job_events WHERE job_id = ? ORDER BY id",  # noqa: S608
        (job_id,),
    ).fetchall()
    history = [rows_.history_entry(event, rows_.from_text) for event in events]
    return Job(**rows_.job_fields(row, rows_.from_text), history=history)


def _list(db: sqlite3.Connection, query: JobQuery) -> JobPage:
    where, params = jobs_where(query, lambda _: "?", _iso)
    rows = db.execute(
        f"SELECT {rows_.JOB_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
        (*params, query.limit + 1),
    ).fetchall()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return JobPage(
        jobs=[JobSummary(**rows_.job_fields(row, rows_.from_text)) for row in rows],
        next_cursor=str(rows[-1][0]) if more else None,
    )


def _register(db: sqlite3.Connection, registration: Registration, now: datetime) -> Registered:
    """Create the job as ``pending``, or attach the context to the job its webhooks created, or compare."""
    row = db.execute(
        "SELECT kind, user_id, organization_id, registered_at, context FROM jobs WHERE job_id = ?",
        (registration.job_id,),
    ).fetchone()
    context = to_json(registration.context)
    moment = _iso(now)
    if row is None:
        db.execute(
            "INSERT INTO jobs (job_id, kind, status, created_at, updated_at, user_id, organization_id,"
            " registered_at, context) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
            (
                registration.job_id,
                registration.kind,
                moment,
                moment,
                registration.user_id,
                registration.organization_id,
                moment,
                context,
            ),
        )
        return Registered(outcome=RegisterOutcome.CREATED)
    if row[0] != registration.kind:
        raise KindConflict(registration.job_id, row[0])
    if row[3] is None:
        db.execute(
            "UPDATE jobs SET user_id = ?, organization_id = ?, registered_at = ?, context = ? WHERE job_id = ?",
            (registration.user_id, registration.organization_id, moment, context, registration.job_id),
        )
        return Registered(outcome=RegisterOutcome.ATTACHED)
    differs = differing_fields(registration, row[1], row[2], decode_context(row[4]))
    if differs:
        return Registered(outcome=RegisterOutcome.CONFLICT, differs=differs)
    return Registered(outcome=RegisterOutcome.UNCHANGED)


def _events_after(
    db: sqlite3.Connection, after: int, limit: int, job_id: str | None, user_id: str | None
) -> list[StreamEvent]:
    where, params = events_where(after, job_id, user_id, lambda _: "?")
    rows = db.execute(
        f"SELECT {EVENT_COLUMNS} FROM job_events e JOIN jobs j ON j.job_id = e.job_id"  # noqa: S608
        f" {where} ORDER BY e.id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [rows_.stream_event(row, rows_.from_text) for row in rows]


def _stats(db: sqlite3.Connection, since: datetime, until: datetime) -> JobStats:
    window = (_iso(since), _iso(until))
    created = dict.fromkeys((status.value for status in Status), 0)
    for status, count in db.execute(
        "SELECT status, count(*) FROM jobs WHERE created_at >= ? AND created_at < ? GROUP BY status", window
    ):
        created[status] = count
    finished = dict(
        db.execute(
            "SELECT status, count(*) FROM jobs WHERE completed_at >= ? AND completed_at < ? GROUP BY status", window
        ).fetchall()
    )
    return job_stats(since, until, created, finished)


_iso = utc_iso
