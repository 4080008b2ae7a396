"""The SQLite store's write-ahead log is copied into the database file in the background, and its file
stays bounded while webhooks keep coming (gateway.stores.sqlite_wal)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.model import JobEvent, Status
from gateway.stores.sqlite_wal import CHECKPOINT_INTERVAL_SECONDS, Checkpointer
from tests.backends import sqlite_job_store

T0 = datetime(2025, 10, 21, 16, 40, tzinfo=UTC)
FRAME_BYTES = 4096 + 24
"""A WAL frame: a default-size page and its header."""


def completed(number: int) -> JobEvent:
    return JobEvent(
        kind="image",
        job_id=f"job-{number}",
        status=Status.COMPLETED,
        timestamp=T0 + timedelta(seconds=number),
        received_at=datetime.now(UTC),
    )


def wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_the_database_file_alone_holds_what_was_written_a_moment_ago(tmp_path: Path) -> None:
    """A copy of the file by itself (without its -wal) has every acknowledged event after a short
    pause: SQLite's own checkpoint would have left these few hundred pages in the WAL."""
    path = tmp_path / "jobs.db"
    store = sqlite_job_store(path)
    await store.open()
    await store.close()
    await store.open()  # reopened: a checkpointer of its own again
    try:
        await asyncio.gather(*(store.apply(completed(number)) for number in range(300)))
        await asyncio.sleep(10 * CHECKPOINT_INTERVAL_SECONDS)
        shutil.copyfile(path, tmp_path / "copy.db")
    finally:
        await store.close()
    copy = sqlite3.connect(tmp_path / "copy.db")
    try:
        assert copy.execute("SELECT count(*) FROM jobs").fetchone()[0] == 300
        assert copy.execute("SELECT count(*) FROM job_events").fetchone()[0] == 300
    finally:
        copy.close()


async def test_the_wal_file_stays_bounded_under_sustained_writes_and_shrinks_after(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    reset_frames = 32
    store = sqlite_job_store(path, wal_reset_frames=reset_frames)
    await store.open()
    sizes: list[int] = []
    try:
        # Writes always in flight: 40 rounds of 100 concurrent webhooks, the WAL's size after each.
        for round_ in range(40):
            await asyncio.gather(*(store.apply(completed(round_ * 100 + number)) for number in range(100)))
            sizes.append(wal_bytes(path))
        # The file starts over while writes keep coming (how far it grows in between depends on how fast
        # this machine writes in one checkpoint interval): without checkpoints it would only grow.
        assert any(later < earlier for earlier, later in itertools.pairwise(sizes)), sizes
        # Once the background checkpoint has caught up, the next write starts the WAL over and trims the
        # file to its bound (journal_size_limit): a burst does not leave a big file behind.
        await asyncio.sleep(10 * CHECKPOINT_INTERVAL_SECONDS)
        await store.apply(completed(10_000))
        assert wal_bytes(path) <= reset_frames * FRAME_BYTES, sizes
        assert (await store.get("job-3999")) is not None
    finally:
        await store.close()


async def test_while_background_checkpoints_fail_the_writer_keeps_the_wal_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's own checkpoints are off, so a background thread that cannot checkpoint (a locked or
    broken file) must not leave the WAL to grow: the writer catches up itself, and the failure is said."""

    def broken(_db: sqlite3.Connection) -> tuple[int, int, int]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Checkpointer, "_checkpoint", staticmethod(broken))
    path = tmp_path / "jobs.db"
    reset_frames = 32
    store = sqlite_job_store(path, wal_reset_frames=reset_frames)
    await store.open()
    try:
        await asyncio.sleep(3 * CHECKPOINT_INTERVAL_SECONDS)  # the background thread has failed by now
        sizes = []
        with caplog.at_level(logging.ERROR, logger="gateway.stores.sqlite_wal"):
            for round_ in range(20):
                await asyncio.gather(*(store.apply(completed(round_ * 100 + number)) for number in range(100)))
                sizes.append(wal_bytes(path))
            assert max(sizes[10:]) <= 1.5 * max(sizes[:10]) + reset_frames * FRAME_BYTES, sizes
            await store.apply(completed(10_000))
            assert wal_bytes(path) <= reset_frames * FRAME_BYTES, sizes
    finally:
        await store.close()
    assert [record.message for record in caplog.records if "checkpoint failed" in record.message]
