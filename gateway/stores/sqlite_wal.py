"""Checkpoints of the SQLite store's write-ahead log, off the write path.

SQLite's automatic checkpoint runs inside the ``COMMIT`` that pushes the WAL past 1000 pages: the
batch of webhooks in that commit waits while pages are copied into the database file, a few times a
second under load, and that wait was most of the gateway's p99 (see docs/benchmark.md). Here the
writer's connection turns it off and a thread of its own copies the WAL in the background (a
``PASSIVE`` checkpoint, which never blocks the writer).

A background checkpoint cannot rewind the WAL while writes keep coming (SQLite starts the WAL over
only when a write begins with every frame already copied), so under sustained load the file would
grow without end. When it passes ``reset_frames``, the writer is asked to catch up itself before its
next transaction: a checkpoint of only the frames written since the background one, after which that
transaction starts the WAL over. ``journal_size_limit`` then trims the file back to the same bound.
The writer also catches up before every transaction while the background checkpoints fail (or their
thread is gone): SQLite's own bound, the autocheckpoint, is off, so nothing else would.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ("CHECKPOINT_INTERVAL_SECONDS", "RESET_FRAMES", "Checkpointer")

logger = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_SECONDS = 0.05
"""Short, so each checkpoint is small and the writer's catch-ups rare: the p99 of a webhook follows it
(docs/benchmark.md has the measurements behind the choice)."""
RESET_FRAMES = 4096
"""About 16 MiB of WAL at SQLite's default 4 KiB pages."""


class Checkpointer:
    """Copies the WAL of the file at ``path`` into the database, every ``interval`` seconds."""

    def __init__(
        self, path: str, *, interval: float = CHECKPOINT_INTERVAL_SECONDS, reset_frames: int = RESET_FRAMES
    ) -> None:
        self._path = path
        self._interval = interval
        self._reset_frames = reset_frames
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-sqlite-checkpoint", daemon=True)
        self._reset_due = False
        self._failing = False

    def configure(self, writer: sqlite3.Connection) -> None:
        """On the writer's connection: no checkpoints of its own, and a WAL file trimmed after a reset."""
        page_size = int(writer.execute("PRAGMA page_size").fetchone()[0])
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute(f"PRAGMA journal_size_limit={self._reset_frames * (page_size + 24)}")

    def start(self) -> None:
        """Start checkpointing (after :meth:`configure`, once the writer's connection is open)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (the store's last connection to close checkpoints what is left)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def before_write(self, writer: sqlite3.Connection) -> None:
        """On the writer's thread, before a transaction: catch up when the WAL has grown past its bound,
        so the transaction starts it over; before every transaction while background checkpoints fail."""
        if not (self._reset_due or self._failing) and self._thread.is_alive():
            return
        try:
            busy, logged, copied = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:
            self._failed(error)
            return
        # Not all copied (a reader still uses older frames, or another checkpoint was running): asked
        # again before the next transaction.
        self._reset_due = busy != 0 or copied < logged

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(self._interval):
                try:
                    if db is None:
                        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                    _busy, logged, _copied = self._checkpoint(db)
                except sqlite3.Error as error:
                    self._failed(error)
                    continue
                if self._failing:
                    self._failing = False
                    logger.warning("SQLite checkpoints succeed again")
                if logged >= self._reset_frames:
                    self._reset_due = True
        finally:
            if db is not None:
                db.close()

    @staticmethod
    def _checkpoint(db: sqlite3.Connection) -> tuple[int, int, int]:
        """A ``PASSIVE`` checkpoint: (busy, frames in the WAL, frames copied)."""
        busy, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(logged), int(copied)

    def _failed(self, error: sqlite3.Error) -> None:
        # Nothing is lost (the WAL keeps every write), and the writer catches up itself meanwhile.
        self._reset_due = True
        if not self._failing:
            self._failing = True
            logger.error("SQLite background checkpoint failed (%s): the writer checkpoints itself meanwhile", error)
