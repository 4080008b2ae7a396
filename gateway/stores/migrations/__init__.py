"""Versioned schema migrations, one SQL file each, per database dialect, and the one runner for both.

Files are named ``NNNN_description.sql`` in a folder per dialect. :func:`run` applies the missing ones in
version order, each in its own transaction that also records it in ``schema_migrations``: applying them
again is a no-op, so ``gateway migrate`` is safe to run any time. What differs between databases (the
placeholders, a lock between replicas, sync or async drivers) is the :class:`Target`'s.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

__all__ = ("Migration", "Target", "load", "run", "statements")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


class Target(Protocol):
    """One database connection as the runner migrates it."""

    @property
    def dialect(self) -> str:
        """The folder of its migrations: ``sqlite`` or ``postgresql``."""
        ...

    def locked(self) -> AbstractAsyncContextManager[object]:
        """Held while the runner works: other processes migrating the same database wait for it."""
        ...

    async def applied_versions(self) -> set[int]:
        """The versions recorded in ``schema_migrations``, which is created first if missing (so this is
        called before :meth:`apply`)."""
        ...

    async def apply(self, migration: Migration) -> bool:
        """In one transaction: unless ``migration`` is recorded by now, run its SQL and record it. Whether it
        ran; a failure rolls the transaction back and propagates."""
        ...


def load(dialect: str) -> list[Migration]:
    """The migrations of ``dialect`` (a folder beside this module), in version order."""
    folder = resources.files(__package__).joinpath(dialect)
    migrations = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            migrations.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    return sorted(migrations, key=lambda migration: migration.version)


async def run(target: Target) -> list[int]:
    """Apply the migrations ``target`` lacks, in order; the versions applied (none: it was up to date).

    A version the database records that this code does not know is left alone (a newer gateway's, during
    a rolling deploy or a rollback). Driver errors propagate.
    """
    known = load(target.dialect)
    applied: list[int] = []
    async with target.locked():
        recorded = await target.applied_versions()
        for migration in known:
            if migration.version not in recorded and await target.apply(migration):
                applied.append(migration.version)
    return applied


def statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (so each runs inside our own transaction)."""
    result: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            result.append(pending.strip())
            pending = ""
    if pending.strip():
        result.append(pending.strip())
    return result
