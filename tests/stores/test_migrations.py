"""The migration runner's contract, the same scenarios on SQLite and on a real PostgreSQL (tests/backends.py):
a fresh database gets every migration in order, a migrated one is left alone, an interrupted history is
completed, and a database the code was not written for (newer, or with a gap) is refused untouched."""

from __future__ import annotations

import asyncio

import pytest

from gateway import backends
from gateway.config import Database
from gateway.model import StoreUnavailable
from gateway.stores import migrations
from gateway.stores.migrations import IncompatibleSchema, Migration, Target
from tests.backends import job_store_on


def known(target: Target) -> list[int]:
    return [migration.version for migration in migrations.load(target.dialect)]


async def record(target: Target, *applied: Migration) -> None:
    """Apply ``applied`` as the runner would, in order (the first call creates ``schema_migrations``)."""
    await target.applied_versions()
    for migration in applied:
        assert await target.apply(migration)


async def test_a_fresh_database_gets_every_migration_in_order_and_a_usable_schema(
    migration_target: tuple[Database, Target],
) -> None:
    database, target = migration_target
    assert await migrations.run(target) == known(target)
    assert await target.applied_versions() == set(known(target))

    store = job_store_on(database)
    await store.open(apply_migrations=False)
    try:
        assert await store.get("never-seen") is None
        assert await store.last_event_id() == 0
    finally:
        await store.close()


async def test_a_migrated_database_is_left_as_it_is(migration_target: tuple[Database, Target]) -> None:
    database, target = migration_target
    await migrations.run(target)
    assert await migrations.run(target) == []
    assert await backends.migrate(database) == []  # the command's path, on a connection of its own
    assert await target.applied_versions() == set(known(target))


async def test_a_partially_applied_history_gets_the_rest_in_order(migration_target: tuple[Database, Target]) -> None:
    """What a run interrupted after its first two migrations leaves: the next run applies only the others."""
    database, target = migration_target
    await record(target, *migrations.load(target.dialect)[:2])
    assert await backends.migrate(database) == known(target)[2:]
    assert await target.applied_versions() == set(known(target))


async def test_a_migration_recorded_meanwhile_is_not_applied_again(migration_target: tuple[Database, Target]) -> None:
    _, target = migration_target
    first = migrations.load(target.dialect)[0]
    await record(target, first)
    assert not await target.apply(first)


async def test_replicas_migrating_together_apply_each_migration_once(
    migration_target: tuple[Database, Target],
) -> None:
    """Two processes' runs at once (each on its own thread, loop and connection) share the work."""
    database, target = migration_target
    runs = await asyncio.gather(*(asyncio.to_thread(asyncio.run, backends.migrate(database)) for _ in range(2)))
    assert sorted(runs[0] + runs[1]) == known(target)
    assert await target.applied_versions() == set(known(target))


async def test_a_database_newer_than_the_code_is_refused_untouched(migration_target: tuple[Database, Target]) -> None:
    """A version this gateway does not know (a newer gateway migrated the database): the command and the
    start-up both refuse, saying which versions, and apply nothing."""
    database, target = migration_target
    newer = known(target)[-1] + 1
    first = migrations.load(target.dialect)[0]
    await record(target, first, Migration(version=newer, name="from_a_newer_gateway", sql="SELECT 1"))

    with pytest.raises(IncompatibleSchema, match=rf"records migrations {newer} that this gateway does not know"):
        await backends.migrate(database)
    store = job_store_on(database)
    with pytest.raises(StoreUnavailable) as refused:
        await store.open()
    await store.close()
    assert isinstance(refused.value.__cause__, IncompatibleSchema)
    assert await target.applied_versions() == {first.version, newer}


async def test_a_history_with_a_gap_is_refused_untouched(migration_target: tuple[Database, Target]) -> None:
    database, target = migration_target
    first, second, third, *_ = migrations.load(target.dialect)
    await record(target, first, Migration(version=third.version, name=third.name, sql="SELECT 1"))

    gap = rf"records migrations {first.version}, {third.version} but not {second.version}: its schema history has a gap"
    with pytest.raises(IncompatibleSchema, match=gap):
        await backends.migrate(database)
    assert await target.applied_versions() == {first.version, third.version}
