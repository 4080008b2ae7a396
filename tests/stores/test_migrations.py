"""The migration runner's contract, the same scenarios on SQLite and on a real PostgreSQL (tests/backends.py):
a fresh database gets every migration in order, a migrated one is left alone, an interrupted history is
completed, and a database the code was not written for (newer, or with a gap) is refused untouched."""

from __future__ import annotations

import asyncio

from gateway import backends
from gateway.config import Database
from gateway.stores import migrations
from gateway.stores.migrations import Migration, Target
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


async def test_a_version_newer_than_the_code_is_left_alone(migration_target: tuple[Database, Target]) -> None:
    """A version this gateway does not know (a newer gateway migrated the database, and this one runs in
    a rolling deploy or a rollback): left recorded, the known ones applied, the store opens."""
    database, target = migration_target
    newer = known(target)[-1] + 1
    first = migrations.load(target.dialect)[0]
    await record(target, first, Migration(version=newer, name="from_a_newer_gateway", sql="SELECT 1"))

    assert await backends.migrate(database) == known(target)[1:]
    store = job_store_on(database)
    await store.open()
    await store.close()
    assert await target.applied_versions() == {*known(target), newer}
