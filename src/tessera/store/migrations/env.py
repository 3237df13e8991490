"""Alembic environment: runs on the connection that ``tessera.store.migrate`` hands in.

``migrate.py`` opens an async connection and calls Alembic inside ``run_sync``, so this
file never creates an engine or touches the event loop. ``--sql`` (offline) mode renders
SQL for the URL in the config.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from tessera.store.tables import UtcDateTime, metadata

config = context.config


def _render_item(kind: str, obj: Any, _autogen_context: Any) -> str | bool:
    """Write UtcDateTime as its plain column type, so revisions do not import our code."""
    if kind == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run Tessera migrations through tessera.store.migrate "
            "(python -m tessera.store --help), not the alembic command"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
