"""StoreError, and the one place where database driver errors become ours.

Every store module runs its database calls inside :func:`translated`, so callers only
ever see :class:`StoreError` (with a message that says what to do next), never an
``asyncpg``, ``sqlite3``, ``OSError`` or SQLAlchemy exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from tessera.errors import TesseraError

SERVICES_DOC = "../shared/services.md"
PG_START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

# SQLSTATE classes/codes that mean "the connection, not the statement, went wrong".
_PG_TRANSIENT_PREFIXES = ("08", "57P", "40001", "40P01", "53")


class StoreError(TesseraError):
    """The database could not do what was asked; ``retryable`` says if trying again may help."""

    default_code = "store_error"

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@contextmanager
def translated(url: URL) -> Iterator[None]:
    """Re-raise any driver or SQLAlchemy error from the block as a :class:`StoreError`."""
    try:
        yield
    except StoreError:
        raise
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise translate(exc, url) from exc


def translate(exc: BaseException, url: URL) -> StoreError:
    """Map one foreign error to a StoreError whose message names the fix."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        return _translate_postgres(exc, url)
    if backend == "sqlite":
        return _translate_sqlite(exc, url)
    return StoreError(f"database error on {backend}: {_detail(exc)}")


def _translate_postgres(exc: BaseException, url: URL) -> StoreError:
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if isinstance(exc, OSError):
        return StoreError(
            f"cannot reach PostgreSQL at {where} ({_detail(exc)}): is it running and accepting "
            f"TCP connections, and is the host in the database URL right? A local server starts "
            f"with `{PG_START_HINT}`; see {SERVICES_DOC}",
            retryable=True,
        )
    if sqlstate == "3D000":
        return StoreError(
            f"database {url.database!r} does not exist on PostgreSQL at {where}: create it "
            f"(`createdb -h {url.host} -p {url.port or 5432} {url.database}`) or fix the URL"
        )
    if sqlstate.startswith("28"):
        return StoreError(
            f"PostgreSQL at {where} refused the login of user {url.username!r}: check the user "
            f"name and password in the database URL"
        )
    if sqlstate == "42P01":
        return _no_schema(f"PostgreSQL database {url.database!r} at {where}")
    if isinstance(exc, sa_exc.IntegrityError):
        return StoreError(f"a database constraint was violated: {_detail(exc)}")
    transient = sqlstate.startswith(_PG_TRANSIENT_PREFIXES) or (
        isinstance(exc, sa_exc.DBAPIError)
        and (exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError))
    )
    if transient:
        return StoreError(
            f"lost the connection to PostgreSQL at {where} ({_detail(exc)}); it may be "
            f"restarting or overloaded, try again",
            retryable=True,
        )
    return StoreError(f"PostgreSQL error at {where}: {_detail(exc)}")


def _translate_sqlite(exc: BaseException, url: URL) -> StoreError:
    path = url.database or ":memory:"
    detail = _detail(exc)
    if isinstance(exc, OSError):
        return StoreError(
            f"cannot create the directory for the SQLite database {path} ({detail}): choose a "
            f"writable data directory or set a database URL"
        )
    if "unable to open database file" in detail:
        return StoreError(
            f"cannot open the SQLite database {path}: check that its directory exists and is "
            f"writable, or choose another data directory"
        )
    if "locked" in detail or "busy" in detail:
        return StoreError(
            f"the SQLite database {path} stayed locked past the busy timeout: another process "
            f"is writing to it; several gateway processes need PostgreSQL instead",
            retryable=True,
        )
    if "no such table" in detail:
        return _no_schema(f"SQLite database {path}")
    if isinstance(exc, sa_exc.IntegrityError):
        return StoreError(f"a database constraint was violated: {detail}")
    return StoreError(f"SQLite error on {path}: {detail}")


def _no_schema(where: str) -> StoreError:
    return StoreError(
        f"the {where} has no Tessera schema yet: run the migrations "
        f"(tessera.store.migrate.upgrade_to_head, done at every gateway start)"
    )


def _detail(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's statement dump and doc link."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    return text.splitlines()[0][:300]
