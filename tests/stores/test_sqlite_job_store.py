"""What only the SQLite job store does: one writer thread with deadlines, reopening after a close, on
another event loop. The contract every job store keeps is test_job_store_contract.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.model import Outcome, Status
from gateway.stores.base import StoreUnavailable
from tests.backends import sqlite_job_store
from tests.stores.test_job_store_contract import event


async def test_a_sqlite_store_reopened_after_close_answers_reads(tmp_path: Path) -> None:
    """Found by schemathesis (its ASGI client runs the app's lifespan around every call): reads after a
    close and a reopen failed with a 500 (the reader thread's executor was shut down for good)."""
    store = sqlite_job_store(tmp_path / "jobs.db")
    await store.open()
    await store.apply(event(Status.PENDING))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get("j1")
    await store.open()
    try:
        job = await store.get("j1")
        assert job is not None
        assert job.status is Status.PENDING
    finally:
        await store.close()


async def test_a_stuck_sqlite_writer_answers_its_callers_503_at_their_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread stuck on a batch (a disk stall): the callers waiting on it, and those queued
    behind it, are answered 503 once their deadline passes, not left hanging; the store then goes on."""
    from gateway.stores import sqlite_executor

    monkeypatch.setattr(sqlite_executor, "_CALL_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(sqlite_executor, "_WATCH_SECONDS", 0.05)
    store = sqlite_job_store(tmp_path / "jobs.db")
    await store.open()
    try:
        started = time.monotonic()
        stuck = asyncio.create_task(store.executor.run("stall", lambda db: time.sleep(1.0)))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(store.apply(event(Status.PENDING, job_id="behind-a-stall")))
        for call in (stuck, queued):
            with pytest.raises(StoreUnavailable):
                await call
        assert time.monotonic() - started < 0.9, "answered only when the stall ended"
        await asyncio.sleep(1.0)  # the stall ends; the queued write ran after it (its sender's retry: duplicate)
        assert (await store.apply(event(Status.GENERATING, 1, job_id="after"))).outcome is Outcome.APPLIED
    finally:
        await store.close()


async def test_a_cancelled_write_still_queued_at_close_is_answered(tmp_path: Path) -> None:
    """Graceful shutdown: the server cancels a request whose write is queued behind a slow batch, then closes
    the store. The request still waits for the truth about its write, so close() must answer it (503:
    not written), or the process would never exit."""
    store = sqlite_job_store(tmp_path / "jobs.db")
    await store.open()
    slow = asyncio.create_task(store.executor.run("slow batch", lambda db: time.sleep(0.3)))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(store.apply(event(Status.PENDING, job_id="queued")))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.sleep(0.01)
    await store.close()
    await slow
    done, _ = await asyncio.wait([queued], timeout=2)
    assert done, "the cancelled write's caller was left waiting after close()"
    assert isinstance(queued.exception(), StoreUnavailable)


async def test_a_write_answered_as_its_caller_is_cancelled_keeps_that_answer(tmp_path: Path) -> None:
    """The writer's answer and a cancellation can reach a caller in the same pass of the event loop: the
    answer stands (the write is committed), and the caller does not wait for another that never comes."""
    store = sqlite_job_store(tmp_path / "jobs.db")
    await store.open()
    try:
        settle = store.executor._settle
        task: asyncio.Task[object] | None = None

        def settle_then_cancel(settled: list[Any]) -> None:
            settle(settled)
            if task is not None and not task.done():
                task.cancel()

        store.executor._settle = settle_then_cancel  # type: ignore[method-assign]
        task = asyncio.create_task(store.apply(event(Status.PENDING, job_id="raced")))
        done, _ = await asyncio.wait([task], timeout=2)
        store.executor._settle = settle  # type: ignore[method-assign]
        assert done, "the caller waited for an answer already given"
        assert task.result().outcome is Outcome.APPLIED  # type: ignore[attr-defined]
    finally:
        await store.close()


def test_a_sqlite_store_reopened_on_another_event_loop_still_answers_stuck_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One store, two event loops in turn (a second test client, a restarted app): deadlines still hold on
    the second loop."""
    from gateway.stores import sqlite_executor

    monkeypatch.setattr(sqlite_executor, "_CALL_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(sqlite_executor, "_WATCH_SECONDS", 0.05)
    store = sqlite_job_store(tmp_path / "jobs.db")

    async def first() -> None:
        await store.open()
        await store.ping()
        await store.close()

    async def second() -> None:
        await store.open()
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.executor.run("stall", lambda db: time.sleep(1.0)), 0.9)
        finally:
            await store.close()

    asyncio.run(first())
    asyncio.run(second())
