"""The hot writers' Core statements, run straight through the SQLite driver.

A journal append is four small statements in one transaction. Through SQLAlchemy's
execution layer (parameter processing, the compiled cache's key, the execution context,
the result wrapper) they cost the writer thread about 300 µs of CPU; through the
``sqlite3`` cursor, 70 µs. At one request at a time every request is two such
transactions (the hold and the capture), on the same core as the gateway's event loop.

So the hot writers keep their statements as Core objects (one definition for SQLite and
PostgreSQL) and run them with :func:`execute_many` and :func:`scalar`: on SQLite the
statement is compiled once, and each row becomes the driver's tuple of parameters, each
value through the column type's own bind processor (a timestamp is stored as SQLAlchemy
would store it). Inside the caller's transaction, on its connection. A statement this
cannot run exactly as SQLAlchemy would (a Python-side column default to compute, a
dialect with named parameters, a row without a value it needs) goes through
``conn.execute`` as before; so does everything on PostgreSQL, where each statement is a
network round trip anyway. Driver errors are raised as SQLAlchemy's, as
``conn.execute`` raises them. What runs this way skips SQLAlchemy's statement events and
its ``echo`` log; the transaction around it (BEGIN, COMMIT) still goes through both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Insert, Select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.base import Executable


@dataclass(frozen=True, slots=True)
class _Parameter:
    name: str
    from_row: bool  # else the statement's own value (a constant in a WHERE, say)
    value: Any
    process: Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled for the driver: its SQL and how a row becomes its parameters."""

    sql: str
    parameters: tuple[_Parameter, ...]

    def args(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for p in self.parameters:
            value = row[p.name] if p.from_row else p.value
            out.append(value if p.process is None or value is None else p.process(value))
        return tuple(out)


def execute_many(conn: Connection, statement: Insert, rows: Sequence[Mapping[str, Any]]) -> None:
    """``conn.execute(statement, rows)``, run by the driver itself where it can be."""
    if not rows:
        return
    plan = _plan_for(conn.dialect, statement, tuple(rows[0]))
    try:
        args = None if plan is None else [plan.args(row) for row in rows]
    except KeyError:  # rows of different shapes: SQLAlchemy says what is wrong
        args = None
    if plan is None or args is None:
        conn.execute(statement, list(rows))
        return
    _run(conn, plan, lambda cursor: cursor.executemany(plan.sql, args), args[:1])


def scalar(conn: Connection, statement: Select[Any]) -> Any:
    """``conn.execute(statement).scalar()``, run by the driver itself where it can be (a
    statement whose one column needs no conversion on the way out)."""
    plan = _plan_for(conn.dialect, statement, ())
    if plan is None or not _plain_result(conn.dialect, statement):
        return conn.execute(statement).scalar()
    args = plan.args({})
    row = _run(conn, plan, lambda cursor: cursor.execute(plan.sql, args).fetchone(), [args])
    return None if row is None else row[0]


def _run(conn: Connection, plan: _Plan, call: Callable[[Any], Any], args: list[Any]) -> Any:
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        return call(cursor)
    except dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(
            plan.sql, args, exc, dbapi.Error, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


@functools.lru_cache(maxsize=64)
def _plan_for(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> _Plan | None:
    """The statement compiled for rows with these keys, or None where only SQLAlchemy
    can run it faithfully. Cached: the hot writers build their statements once."""
    if dialect.name != "sqlite" or dialect.paramstyle != "qmark":
        return None
    table = getattr(statement, "table", None)
    if table is not None and any(
        column.default is not None or column.onupdate is not None for column in table.columns
    ):
        return None  # SQLAlchemy computes those values per execution
    compiled = statement.compile(dialect=dialect, column_keys=list(keys) or None)
    if compiled.positiontup is None:
        return None
    parameters = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        if bind.callable is not None:
            return None  # a value computed per execution
        from_row = bool(bind.required)
        if from_row and name not in keys:
            return None
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        parameters.append(_Parameter(name, from_row, None if from_row else bind.value, process))
    return _Plan(compiled.string, tuple(parameters))


def _plain_result(dialect: Dialect, statement: Select[Any]) -> bool:
    columns = list(statement.selected_columns)
    return (
        len(columns) == 1
        and columns[0].type.dialect_impl(dialect).result_processor(dialect, None) is None
    )
