"""The ledger journal in the database: appended in batches, loaded once at start, provably sound.

The gateway is the journal's single writer. It posts entries to the in-memory
:class:`~tessera.ledger.journal.Ledger`, which numbers them 1, 2, 3, ..., and group-commits
them here with :meth:`LedgerStore.append`: one transaction per batch, a handful of
statements whatever the batch size, and the ``ledger_balances`` rows moved in the same
transaction. A batch whose commit outcome was unclear can simply be sent again: entries
already stored are skipped. :meth:`LedgerStore.check` rebuilds everything from the
postings in SQL and reports any disagreement.

On PostgreSQL an owner can lose the ledger while it runs (its lock's session ends: see
store/ledger_owner.py), and its next owner may be replaying the journal before the old
one has noticed. Two things keep them from writing one journal at once. The old owner's
every append checks, inside its transaction and after its inserts, that its lock is still
held (a *write fence*), and rolls back if not. The new owner, before it replays, waits
for the transactions that were writing the journal to end (:meth:`LedgerStore.
wait_for_writers`): one that passed its fence before the lock changed hands is then in
what it replays, and any later one fails its fence.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from tessera.ledger.accounts import CHAIN, MINT, UNCOLLECTED, Account
from tessera.ledger.journal import (
    MAX_ACCOUNT_CHARS,
    MAX_KIND_CHARS,
    MAX_REFERENCE_CHARS,
    Entry,
    LedgerError,
    Posting,
)
from tessera.store.batched import in_transaction
from tessera.store.dialect import conflict_insert
from tessera.store.driver_statements import execute_many, scalar
from tessera.store.engine import SQLITE_BEGIN_OPTION
from tessera.store.errors import StoreError, translated
from tessera.store.tables import ledger_balances, ledger_entries, ledger_postings

NEGATIVE_ACCOUNTS = (MINT, CHAIN, UNCOLLECTED)  # the system accounts that may go below 0

# Run inside an append's transaction, after its inserts: raises JournalConflict when this
# process may no longer write the journal (see the module docstring).
WriteFence = Callable[[Connection], None]


class JournalConflict(StoreError):
    """The stored journal does not continue the one being written: another writer (a
    second gateway on this database) wrote it. No single entry is at fault."""


_entries = ledger_entries.c
_postings = ledger_postings.c
_balances = ledger_balances.c


class LedgerStore:
    """Reads and writes ``ledger_entries``, ``ledger_postings`` and ``ledger_balances``."""

    def __init__(self, engine: AsyncEngine, fence: WriteFence | None = None) -> None:
        self._engine = engine
        self._fence = fence

    async def load(self) -> list[Entry]:
        """Every entry, in entry_id order, rebuilt exactly as the Ledger made it.

        Runs once at gateway start, to replay into a fresh Ledger; never on the hot path.
        """
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                await _snapshot(conn)
                entry_rows = (
                    await conn.execute(select(ledger_entries).order_by(_entries.entry_id))
                ).all()
                posting_rows = (
                    await conn.execute(
                        select(_postings.entry_id, _postings.account, _postings.amount).order_by(
                            _postings.entry_id
                        )
                    )
                ).all()
        by_entry: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for entry_id, account, amount in posting_rows:
            by_entry[entry_id].append((account, amount))
        return [_entry(row, by_entry.get(row.entry_id, [])) for row in entry_rows]

    async def append(self, entries: Sequence[Entry]) -> None:
        """Store ``entries`` (ascending ids) and move the balances, in one transaction.

        Entries whose id the database already holds are skipped (a retried batch), after
        checking that the stored entry is the same one; the rest must continue the journal
        without a gap, or nothing is written and StoreError says so. A second entry of one
        (kind, reference) is refused by the database.
        """
        if not entries:
            return
        for entry in entries:
            _check_widths(entry)
        with translated(self._engine.url):
            # Read max(entry_id), then write: on SQLite take the write lock before the read.
            await in_transaction(
                self._engine,
                lambda conn: _append(conn, entries, self._fence),
                **{SQLITE_BEGIN_OPTION: "IMMEDIATE"},
            )

    async def wait_for_writers(self) -> None:
        """Return once no transaction that was writing the journal is still open: a lost
        owner's last append is then either stored or never will be. For the next owner,
        before it replays. (SQLite needs no wait: the old owner is a dead process, and its
        open transaction died with it.)"""
        if self._engine.dialect.name != "postgresql":
            return
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                # SHARE conflicts with the ROW EXCLUSIVE an insert holds to its commit.
                await conn.execute(text("LOCK TABLE ledger_entries IN SHARE MODE"))

    async def balances(self) -> dict[Account, int]:
        """Every non-zero stored balance."""
        stmt = select(_balances.account, _balances.balance).where(_balances.balance != 0)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        try:
            return {Account.parse(account): int(balance) for account, balance in rows}
        except ValueError as exc:
            raise StoreError(f"ledger_balances holds an unknown account ({exc})") from exc

    async def entries_for(self, reference: str) -> list[Entry]:
        """The entries about one reference (a request id, say), oldest first. Indexed."""
        stmt = (
            select(ledger_entries, _postings.account, _postings.amount)
            .join(ledger_postings, _postings.entry_id == _entries.entry_id)
            .where(_entries.reference == reference)
            .order_by(_entries.entry_id)
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        heads: dict[int, Any] = {}
        by_entry: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for row in rows:
            heads.setdefault(row.entry_id, row)
            by_entry[row.entry_id].append((row.account, row.amount))
        return [_entry(head, by_entry[entry_id]) for entry_id, head in heads.items()]

    async def check(self) -> list[str]:
        """Problems found by rebuilding the journal's invariants in SQL; empty when sound.

        Checks that every entry has two or more postings summing to zero, that entry ids run
        1..N without gaps, that ``ledger_balances`` equals the postings summed per account,
        that no account but mint, chain and uncollected is negative, and that all balances sum to zero.
        """
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                await _snapshot(conn)
                return [
                    *await _unsound_entries(conn),
                    *await _id_gaps(conn),
                    *await _balance_mismatches(conn),
                    *await _negative_accounts(conn),
                    *await _totals(conn),
                ]


async def _snapshot(conn: AsyncConnection) -> None:
    """Make the reads that follow see one consistent state while appends go on.

    SQLite's read transaction is a snapshot already; PostgreSQL needs REPEATABLE READ.
    """
    if conn.dialect.name == "postgresql":
        await conn.execution_options(isolation_level="REPEATABLE READ")


def _check_widths(entry: Entry) -> None:
    """The column widths of tables.py (the ledger checks them too, before posting), checked
    here again because SQLite would not enforce them."""
    if len(entry.kind) > MAX_KIND_CHARS or len(entry.reference) > MAX_REFERENCE_CHARS:
        raise StoreError(
            f"entry {entry.entry_id}: kind may be {MAX_KIND_CHARS} and reference "
            f"{MAX_REFERENCE_CHARS} characters at most"
        )
    for posting in entry.postings:
        if len(str(posting.account)) > MAX_ACCOUNT_CHARS:
            raise StoreError(
                f"entry {entry.entry_id}: account name {str(posting.account)[:40]}... is longer "
                f"than {MAX_ACCOUNT_CHARS} characters"
            )


_MAX_ENTRY_ID = select(func.max(_entries.entry_id))


def _append(conn: Connection, entries: Sequence[Entry], fence: WriteFence | None) -> None:
    """The batch as one transaction's statements (see :meth:`LedgerStore.append`)."""
    stored = int(scalar(conn, _MAX_ENTRY_ID) or 0)
    retried = [entry for entry in entries if entry.entry_id <= stored]
    if retried:
        _check_retried(conn, retried)
    fresh = _fresh(entries, stored)
    if fresh:
        _insert(conn, fresh)
        if fence is not None:  # after the inserts: their table lock is held to the commit
            fence(conn)


def _check_retried(conn: Connection, retried: Sequence[Entry]) -> None:
    """Entries being skipped as already stored must be the stored ones, or a second
    writer's entries would vanish without a word. Costs a query only on a retry."""
    ids = [entry.entry_id for entry in retried]
    stmt = select(_entries.entry_id, _entries.kind, _entries.reference, _entries.at).where(
        _entries.entry_id.between(min(ids), max(ids))
    )
    stored = {row.entry_id: (row.kind, row.reference, row.at) for row in conn.execute(stmt)}
    for entry in retried:
        if stored.get(entry.entry_id) != (entry.kind, entry.reference, float(entry.at)):
            raise JournalConflict(
                f"entry {entry.entry_id} in the database is not the one being retried "
                f"({entry.kind} {entry.reference}); is another gateway writing this journal?"
            )


def _fresh(entries: Sequence[Entry], stored: int) -> list[Entry]:
    """The entries after ``stored``, which must be stored + 1, stored + 2, ... in order."""
    fresh = [entry for entry in entries if entry.entry_id > stored]
    for expected, entry in enumerate(fresh, start=stored + 1):
        if entry.entry_id != expected:
            if expected == stored + 1:
                raise JournalConflict(
                    f"journal gap: the database holds up to {stored}, got {entry.entry_id}; "
                    f"is another gateway writing this journal?"
                )
            raise JournalConflict(
                f"journal gap inside the batch: entry {expected - 1} is followed by "
                f"{entry.entry_id}; nothing was written"
            )
    return fresh


def _insert(conn: Connection, fresh: Sequence[Entry]) -> None:
    """Three executemany statements, whatever the number of entries."""
    statements = _statements(conn.dialect.name)
    execute_many(
        conn,
        statements.entries,
        [
            {
                "entry_id": entry.entry_id,
                "kind": entry.kind,
                "reference": entry.reference,
                "at": float(entry.at),
                "memo": _memo_json(entry.memo),
            }
            for entry in fresh
        ],
    )
    deltas: dict[str, int] = defaultdict(int)
    posting_rows = []
    for entry in fresh:
        for posting in entry.postings:
            account = str(posting.account)
            deltas[account] += posting.amount
            posting_rows.append(
                {"entry_id": entry.entry_id, "account": account, "amount": posting.amount}
            )
    execute_many(conn, statements.postings, posting_rows)
    last = fresh[-1].entry_id
    # Sorted, so two writers (which would be a bug) lock rows in one order and cannot deadlock.
    execute_many(
        conn,
        statements.balances,
        [
            {"account": account, "balance": deltas[account], "last_entry_id": last}
            for account in sorted(deltas)
        ],
    )


@dataclass(frozen=True, slots=True)
class _Statements:
    entries: Insert
    postings: Insert
    balances: Insert


@functools.cache
def _statements(dialect: str) -> _Statements:
    """The append's statements, built once per dialect: building an upsert (its
    ``excluded`` columns) costs more than running it, and a reused statement also hits
    SQLAlchemy's compiled cache without rebuilding its cache key's parts."""
    upsert = conflict_insert(dialect, ledger_balances)
    upsert = upsert.on_conflict_do_update(
        index_elements=[_balances.account],
        set_={
            "balance": _balances.balance + upsert.excluded.balance,
            "last_entry_id": upsert.excluded.last_entry_id,
        },
    )
    return _Statements(insert(ledger_entries), insert(ledger_postings), upsert)


def _memo_json(memo: Iterable[tuple[str, str]]) -> str:
    return json.dumps(dict(memo), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _entry(row: Any, postings: Iterable[tuple[str, int]]) -> Entry:
    """An Entry from its stored row and postings; StoreError if the stored data is unsound."""
    try:
        memo = json.loads(row.memo)
        if not isinstance(memo, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in memo.items()
        ):
            raise ValueError("the memo is not a JSON object of strings")
        # Sorted by Account, as Ledger.post sorts them, so the rebuilt Entry is equal.
        parsed = sorted(
            (Posting(Account.parse(account), int(amount)) for account, amount in postings),
            key=lambda posting: posting.account,
        )
        return Entry(
            entry_id=int(row.entry_id),
            kind=row.kind,
            reference=row.reference,
            postings=tuple(parsed),
            at=float(row.at),
            memo=tuple(sorted(memo.items())),
        )
    except (LedgerError, ValueError) as exc:
        raise StoreError(
            f"stored ledger entry {row.entry_id} is unsound ({exc}); LedgerStore.check() "
            f"lists every problem"
        ) from exc


async def _unsound_entries(conn: AsyncConnection) -> list[str]:
    count = func.count(_postings.account)
    total = func.coalesce(func.sum(_postings.amount), 0)
    stmt = (
        select(_entries.entry_id, count, total)
        .select_from(
            ledger_entries.outerjoin(ledger_postings, _postings.entry_id == _entries.entry_id)
        )
        .group_by(_entries.entry_id)
        .having(or_(count < 2, total != 0))
        .order_by(_entries.entry_id)
    )
    problems = []
    for entry_id, postings, amount in (await conn.execute(stmt)).all():
        if postings < 2:
            problems.append(f"entry {entry_id} has {postings} posting(s), needs at least 2")
        if int(amount) != 0:
            problems.append(f"entry {entry_id}: postings sum to {int(amount)}, not 0")
    return problems


async def _id_gaps(conn: AsyncConnection) -> list[str]:
    count, first, last = (
        await conn.execute(
            select(func.count(), func.min(_entries.entry_id), func.max(_entries.entry_id))
        )
    ).one()
    if count == 0 or (first == 1 and last == count):
        return []
    problems = [] if first == 1 else [f"entry ids start at {first}, not 1"]
    after = ledger_entries.alias("after")
    following = (
        select(func.min(after.c.entry_id))
        .where(after.c.entry_id > _entries.entry_id)
        .scalar_subquery()
    )
    stmt = (
        select(_entries.entry_id, following)
        .where(
            _entries.entry_id < last,
            ~exists().where(after.c.entry_id == _entries.entry_id + 1),
        )
        .order_by(_entries.entry_id)
    )
    for before, resumed in (await conn.execute(stmt)).all():
        problems.append(
            f"entry ids jump from {before} to {resumed}: {before + 1}..{resumed - 1} missing"
        )
    return problems


async def _balance_mismatches(conn: AsyncConnection) -> list[str]:
    zero = literal(0, BigInteger)
    both = union_all(
        select(
            _postings.account.label("account"),
            _postings.amount.label("journal"),
            zero.label("stored"),
        ),
        select(_balances.account, zero, _balances.balance),
    ).subquery()
    journal = func.sum(both.c.journal)
    stored = func.sum(both.c.stored)
    stmt = (
        select(both.c.account, journal, stored)
        .group_by(both.c.account)
        .having(journal != stored)
        .order_by(both.c.account)
    )
    return [
        f"{account}: ledger_balances holds {int(kept)}, the postings sum to {int(rebuilt)}"
        for account, rebuilt, kept in (await conn.execute(stmt)).all()
    ]


async def _negative_accounts(conn: AsyncConnection) -> list[str]:
    total = func.sum(_postings.amount)
    stmt = (
        select(_postings.account, total)
        .where(_postings.account.not_in([str(a) for a in NEGATIVE_ACCOUNTS]))
        .group_by(_postings.account)
        .having(total < 0)
        .order_by(_postings.account)
    )
    return [
        f"{account} is negative: its postings sum to {int(amount)}, below 0"
        for account, amount in (await conn.execute(stmt)).all()
    ]


async def _totals(conn: AsyncConnection) -> list[str]:
    journal = (await conn.execute(select(func.sum(_postings.amount)))).scalar()
    stored = (await conn.execute(select(func.sum(_balances.balance)))).scalar()
    problems = []
    if int(journal or 0) != 0:
        problems.append(f"the postings of all accounts sum to {int(journal)}, not 0")
    if int(stored or 0) != 0:
        problems.append(f"the ledger_balances rows sum to {int(stored)}, not 0")
    return problems
