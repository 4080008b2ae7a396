"""Versioned schema migrations, one SQL file each, per database dialect.

Files are named ``NNNN_description.sql`` and applied in order, each in its own transaction, recorded in
``schema_migrations``: applying them again is a no-op, so ``gateway migrate`` is safe to run any time.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from importlib import resources

__all__ = ("Migration", "load", "statements")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """The migrations of ``dialect`` (a folder beside this module), in version order."""
    folder = resources.files(__package__).joinpath(dialect)
    migrations = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            migrations.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    return sorted(migrations, key=lambda migration: migration.version)


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
