"""Dialect-specific INSERT, for upserts and insert-if-absent on both SQLite and PostgreSQL.

Both dialects spell ``INSERT ... ON CONFLICT`` the same way in SQLAlchemy
(``on_conflict_do_update`` / ``on_conflict_do_nothing`` and ``.excluded``), but each needs
its own ``insert`` construct.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

from tessera.store.errors import StoreError


def conflict_insert(dialect_name: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT for ``table`` that supports ON CONFLICT on the given dialect."""
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    raise StoreError(f"unsupported database dialect {dialect_name!r}: use SQLite or PostgreSQL")
