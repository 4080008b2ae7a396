"""The outbox contract under the dispatcher: leases, per-job order, takeover, replay and retention, run
over every backend (SQLite, and a real PostgreSQL; tests/backends.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.model import JobEvent, Status
from gateway.outbox import DeliveryState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(job_id: str, status: Status, minute: int) -> JobEvent:
    moment = NOW + timedelta(minutes=minute)
    return JobEvent(kind="image", job_id=job_id, status=status, timestamp=moment, received_at=moment)


async def test_claims_take_each_jobs_oldest_pending_row_only(outbox_store: tuple[Any, Any]) -> None:
    """A job's later event waits while an earlier one is pending (leased or retrying); a dead one stops
    blocking; different jobs are claimed together."""
    store, rows = outbox_store
    for job in ("a", "b"):
        for minute, status in enumerate((Status.PENDING, Status.GENERATING, Status.COMPLETED)):
            await store.apply(event(job, status, minute))
    later = NOW + timedelta(hours=1)
    first = await rows.claim("one", ["http"], 10, 30, later)
    assert sorted((c.delivery.job_id, c.delivery.status) for c in first) == [("a", "pending"), ("b", "pending")]
    assert all(c.delivery.attempt == 1 and c.delivery.event_id == f"evt_{c.delivery.sequence}" for c in first)
    assert await rows.claim("two", ["http"], 10, 30, later) == []  # heads leased, the rest wait behind them

    a, b = sorted(first, key=lambda c: c.delivery.job_id)
    assert await rows.retry(a.delivery.id, "one", later + timedelta(minutes=5), "HTTP 503", later)
    assert await rows.dead(b.delivery.id, "one", "HTTP 400", later)
    # a's head is pending again but not due: it still blocks a; b's dead head no longer blocks b.
    second = await rows.claim("two", ["http"], 10, 3600, later)
    assert [(c.delivery.job_id, c.delivery.status) for c in second] == [("b", "generating")]
    retried = await rows.claim("two", ["http"], 10, 30, later + timedelta(minutes=6))
    assert [(c.delivery.job_id, c.delivery.status, c.delivery.attempt) for c in retried] == [("a", "pending", 2)]


async def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_settle(outbox_store: tuple[Any, Any]) -> None:
    """A dispatcher that died (or stalled past its lease) loses its rows to another after the lease expires;
    its late result is refused, so it cannot overwrite the new owner's."""
    store, rows = outbox_store
    await store.apply(event("lease", Status.PENDING, 0))
    later = NOW + timedelta(hours=1)
    [mine] = await rows.claim("dead-replica", ["http"], 10, 5, later)
    assert await rows.claim("survivor", ["http"], 10, 5, later + timedelta(seconds=4)) == []
    [taken] = await rows.claim("survivor", ["http"], 10, 5, later + timedelta(seconds=6))
    assert taken.delivery.id == mine.delivery.id
    assert taken.delivery.attempt == 2
    assert not await rows.delivered(mine.delivery.id, "dead-replica", later)
    assert await rows.delivered(taken.delivery.id, "survivor", later)
    [record] = (await rows.list_deliveries(state=None, job_id="lease", limit=10, cursor=None)).deliveries
    assert record.state is DeliveryState.DELIVERED


async def test_delivered_many_settles_only_the_rows_still_leased_to_their_owner(
    outbox_store: tuple[Any, Any],
) -> None:
    """A batch of results is one write: the rows still leased to the owner are delivered (and their job's
    next event comes due); a row another owner took over is left to it."""
    store, rows = outbox_store
    for job in ("x", "y", "z"):
        await store.apply(event(job, Status.PENDING, 0))
    await store.apply(event("y", Status.COMPLETED, 1))
    later = NOW + timedelta(hours=1)
    claimed = {c.delivery.job_id: c.delivery for c in await rows.claim("me", ["http"], 10, 5, later)}
    assert sorted(claimed) == ["x", "y", "z"]
    [taken] = await rows.claim("other", ["http"], 1, 5, later + timedelta(seconds=6))  # the oldest: x's
    assert taken.delivery.id == claimed["x"].id
    ids = [claimed[job].id for job in ("x", "y", "z")]
    assert await rows.delivered_many(ids, "me", later + timedelta(seconds=7)) == {claimed["y"].id, claimed["z"].id}
    page = await rows.list_deliveries(state=DeliveryState.DELIVERED, job_id=None, limit=10, cursor=None)
    assert sorted(record.job_id for record in page.deliveries) == ["y", "z"]
    [following] = await rows.claim("me", ["http"], 10, 5, later + timedelta(seconds=8))
    assert (following.delivery.job_id, following.delivery.status) == ("y", "completed")
    assert await rows.delivered(taken.delivery.id, "other", later + timedelta(seconds=9))


async def test_prune_finished_deletes_old_delivered_rows_in_batches(outbox_store: tuple[Any, Any]) -> None:
    """The retention hook: delivered rows older than the cut-off go, a batch at a time; pending rows stay,
    and so do dead letters (events the app never got, until an operator replays them)."""
    store, rows = outbox_store
    for job in ("p1", "p2", "p3"):
        await store.apply(event(job, Status.PENDING, 0))
    claimed = await rows.claim("me", ["http"], 10, 30, NOW + timedelta(minutes=1))
    by_job = {c.delivery.job_id: c.delivery for c in claimed}
    assert await rows.delivered(by_job["p1"].id, "me", NOW)
    assert await rows.dead(by_job["p2"].id, "me", "HTTP 400", NOW)
    assert await rows.retry(by_job["p3"].id, "me", NOW, "HTTP 503", NOW)
    cutoff = NOW + timedelta(days=1)
    assert await rows.delivered(by_job["p3"].id, "me", NOW) is False  # retrying: no longer leased to "me"
    assert await rows.prune_finished(cutoff, 1) == 1
    assert await rows.prune_finished(cutoff, 1) == 0
    left = (await rows.list_deliveries(state=None, job_id=None, limit=10, cursor=None)).deliveries
    assert sorted((r.job_id, r.state) for r in left) == [("p2", DeliveryState.DEAD), ("p3", DeliveryState.PENDING)]
    assert await rows.prune_finished(NOW - timedelta(days=1), 10) == 0


async def test_listing_pages_newest_first(outbox_store: tuple[Any, Any]) -> None:
    store, rows = outbox_store
    for n in range(5):
        await store.apply(event(f"page-{n}", Status.PENDING, n))
    first = await rows.list_deliveries(state=DeliveryState.PENDING, job_id=None, limit=3, cursor=None)
    assert [r.job_id for r in first.deliveries] == ["page-4", "page-3", "page-2"]
    assert first.next_cursor is not None
    rest = await rows.list_deliveries(state=None, job_id=None, limit=3, cursor=int(first.next_cursor))
    assert [r.job_id for r in rest.deliveries] == ["page-1", "page-0"]
    assert rest.next_cursor is None


async def test_a_stopping_dispatcher_frees_its_leases_for_the_others(outbox_store: tuple[Any, Any]) -> None:
    """Deliveries cut off by a stop are taken by another dispatcher at once, not after the lease; the
    leases of other dispatchers stay."""
    store, rows = outbox_store
    for job in ("mine", "theirs"):
        await store.apply(event(job, Status.PENDING, 0))
    later = NOW + timedelta(hours=1)
    [mine] = await rows.claim("stopping", ["http"], 1, 600, later)
    [theirs] = await rows.claim("running", ["http"], 1, 600, later)
    assert await rows.release_leases("stopping") == 1
    [taken] = await rows.claim("survivor", ["http"], 10, 600, later)
    assert taken.delivery.id == mine.delivery.id
    assert await rows.delivered(theirs.delivery.id, "running", later)


async def test_a_replayed_dead_letter_is_pending_since_its_replay(outbox_store: tuple[Any, Any]) -> None:
    """The oldest-pending gauge (and GatewayDeliveryPendingTooLong) measures from when a row last became
    pending: replaying a week-old dead letter is not a stuck backlog."""
    store, rows = outbox_store
    await store.apply(event("old", Status.PENDING, 0))
    [claimed] = await rows.claim("me", ["http"], 10, 30, NOW + timedelta(minutes=1))
    assert await rows.dead(claimed.delivery.id, "me", "HTTP 400", NOW + timedelta(minutes=1))
    replayed_at = NOW + timedelta(days=7)
    assert (await rows.replay(claimed.delivery.id, replayed_at)).state is DeliveryState.PENDING
    [backlog] = await rows.backlog()
    assert backlog.count == 1
    assert backlog.oldest_pending_since == replayed_at
