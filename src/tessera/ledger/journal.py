"""The double-entry journal: append-only, balanced, integer entries.

Invariants, checked on every post and recomputable from the entries alone:
every entry's postings sum to zero; amounts are ints (never floats, never bools);
no account but ``mint`` is ever negative; all balances sum to zero. Nothing edits or
deletes an entry: a correction is a new entry.

Every entry also fits the journal's storage: its kind, reference, account names and memo
are bounded (``MAX_*_CHARS``), hold no NUL and are valid UTF-8, and every balance stays
in a signed 64-bit integer. These are checked here, before anything moves, so the store
never refuses an entry the book already applied. ``revert`` takes back the newest entry
when the store refused it after all (the gateway's writer then re-posts the entries that
followed it).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from tessera.ledger.accounts import MINT, Account

T = TypeVar("T")


class LedgerError(Exception):
    """A movement the ledger refuses; the ledger is unchanged."""


class UnbalancedEntry(LedgerError):
    pass


class InsufficientFunds(LedgerError):
    def __init__(self, account: Account, balance: int, change: int) -> None:
        super().__init__(f"{account} holds {balance}, cannot move {-change}")
        self.account = account
        self.balance = balance
        self.shortfall = -(balance + change)


class DuplicateEntry(LedgerError):
    """An entry of this kind for this reference exists: nothing is done twice."""


class EntryTooLarge(LedgerError):
    """A text field or a balance would not fit the stored journal; nothing moved."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# The stored journal's widths (store/tables.py declares the same columns).
MAX_KIND_CHARS = 32
MAX_REFERENCE_CHARS = 200
MAX_ACCOUNT_CHARS = 120
MAX_MEMO_CHARS = 4_000  # the memo as stored: compact JSON of its keys and values
MAX_BALANCE = 2**63 - 1  # balances are BIGINT columns
MIN_BALANCE = -(2**63)


def check_text(field: str, value: str, max_chars: int) -> None:
    """``value`` fits a journal column: a str of at most ``max_chars``, no NUL, valid UTF-8.

    PostgreSQL refuses NUL in text and a lone surrogate cannot be encoded: either would
    make the store refuse an entry that memory had already applied.
    """
    if type(value) is str and len(value) <= max_chars and value.isascii() and "\x00" not in value:
        return  # the common case, decided in C: ASCII always encodes
    if not isinstance(value, str):
        raise EntryTooLarge(field, f"{field} must be text, not {type(value).__name__}")
    if len(value) > max_chars:
        raise EntryTooLarge(
            field, f"{field} is {len(value)} characters; the journal keeps {max_chars} at most"
        )
    if "\x00" in value:
        raise EntryTooLarge(field, f"{field} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EntryTooLarge(field, f"{field} is not valid Unicode text") from exc


def memo_chars(memo: Iterable[tuple[str, str]]) -> int:
    """The memo's stored size: its JSON object, compact, keys and values quoted."""
    return 2 + sum(len(k) + len(v) + 6 for k, v in memo)


@dataclass(frozen=True, slots=True)
class Posting:
    account: Account
    amount: int  # positive raises the account's balance, negative lowers it


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: int
    kind: str
    reference: str
    postings: tuple[Posting, ...]
    at: float
    memo: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_postings(self.postings)

    def memo_dict(self) -> dict[str, str]:
        return dict(self.memo)


def forget_through(undo: dict[int, T], upto_entry_id: int) -> None:
    """Drop undo records (kept in entry-id order) of entries up to ``upto_entry_id``."""
    while undo:
        first = next(iter(undo))
        if first > upto_entry_id:
            return
        del undo[first]


def check_fits(entry: Entry) -> None:
    """EntryTooLarge unless every text of ``entry`` fits the stored journal."""
    check_text("kind", entry.kind, MAX_KIND_CHARS)
    check_text("reference", entry.reference, MAX_REFERENCE_CHARS)
    for p in entry.postings:
        _check_account(p.account)
    for k, v in entry.memo:
        check_text("memo", k, MAX_MEMO_CHARS)
        check_text("memo", v, MAX_MEMO_CHARS)
    if memo_chars(entry.memo) > MAX_MEMO_CHARS:
        raise EntryTooLarge("memo", f"the memo is longer than {MAX_MEMO_CHARS} characters")


@functools.lru_cache(maxsize=65_536)
def _check_account(account: Account) -> None:
    """An account name fits its column (cached: a ledger posts to the same few accounts)."""
    check_text("account", str(account), MAX_ACCOUNT_CHARS)


def check_postings(postings: Iterable[Posting]) -> None:
    items = list(postings)
    if len(items) < 2:
        raise UnbalancedEntry("an entry needs at least two postings")
    for p in items:
        if type(p.amount) is not int:
            raise UnbalancedEntry(f"amount {p.amount!r} is not an integer of base units")
        if p.amount == 0:
            raise UnbalancedEntry(f"zero posting to {p.account}")
    if sum(p.amount for p in items) != 0:
        raise UnbalancedEntry("postings do not sum to zero")
    if len({p.account for p in items}) != len(items):
        raise UnbalancedEntry("an account appears twice in one entry")


class Ledger:
    """Balances and the journal that explains them.

    ``retain_entries=False`` keeps only balances and the entry count: a long-running
    gateway stores its journal in the database and must not grow memory per request.
    For the same reason it then forgets the (kind, reference) pairs of ``guarded_kinds``,
    whose single use the caller guarantees itself (escrow settles only open holds, and
    request ids are fresh); the database's unique index stays the last word.
    """

    def __init__(
        self, retain_entries: bool = True, guarded_kinds: frozenset[str] = frozenset()
    ) -> None:
        self._guarded = frozenset() if retain_entries else guarded_kinds
        self._balances: dict[Account, int] = defaultdict(int)
        self._entries: list[Entry] = []
        self._retain = retain_entries
        self._count = 0
        self._last: Entry | None = None
        self._unique: set[tuple[str, str]] = set()

    @property
    def entries(self) -> tuple[Entry, ...]:
        """Every entry, when retained (empty otherwise)."""
        return tuple(self._entries)

    @property
    def entry_count(self) -> int:
        return self._count

    @property
    def last(self) -> Entry | None:
        return self._last

    def balance(self, account: Account) -> int:
        return self._balances.get(account, 0)

    def balances(self) -> Mapping[Account, int]:
        return {a: b for a, b in self._balances.items() if b}

    @property
    def minted(self) -> int:
        return -self.balance(MINT)

    def post(
        self,
        kind: str,
        reference: str,
        changes: Mapping[Account, int],
        at: float,
        *,
        unique: bool = False,
        memo: Mapping[str, str] | None = None,
    ) -> Entry:
        """Apply one balanced entry atomically, or raise and change nothing.

        ``unique`` refuses a second entry of the same kind and reference (a capture or a
        release happens once per request, whatever retries the caller makes).
        """
        key = (kind, reference)
        if unique and key in self._unique:
            raise DuplicateEntry(f"{kind} for {reference} was already posted")
        postings = tuple(Posting(a, amt) for a, amt in sorted(changes.items()) if amt != 0)
        entry = Entry(
            entry_id=self._count + 1,
            kind=kind,
            reference=reference,
            postings=postings,
            at=at,
            memo=tuple(sorted((memo or {}).items())),
        )
        check_fits(entry)
        for p in postings:
            after = self.balance(p.account) + p.amount
            if after < 0 and not p.account.may_go_negative:
                raise InsufficientFunds(p.account, self.balance(p.account), p.amount)
            if not MIN_BALANCE <= after <= MAX_BALANCE:
                raise EntryTooLarge("amount", f"{p.account} would leave a 64-bit balance")
        self._apply(entry)
        if unique and kind not in self._guarded:
            self._unique.add(key)
        return entry

    def replay(self, entry: Entry, unique: bool = False) -> None:
        """Load a stored entry (on start); it must fit the invariants like a new one."""
        if entry.entry_id != self._count + 1:
            raise LedgerError(f"entry {entry.entry_id} is out of order")
        for p in entry.postings:
            if self.balance(p.account) + p.amount < 0 and not p.account.may_go_negative:
                raise InsufficientFunds(p.account, self.balance(p.account), p.amount)
        self._apply(entry)
        if unique and entry.kind not in self._guarded:
            self._unique.add((entry.kind, entry.reference))

    def revert(self, entry: Entry) -> None:
        """Take back ``entry``, which must be the newest: the store refused it (or an
        entry before it), so memory must not keep it. Balances return exactly."""
        if entry.entry_id != self._count or (self._last is not None and self._last != entry):
            raise LedgerError(f"entry {entry.entry_id} is not the newest; it cannot be reverted")
        for p in entry.postings:
            self._balances[p.account] -= p.amount
            if not self._balances[p.account]:
                del self._balances[p.account]
        self._count -= 1
        if self._retain:
            self._entries.pop()
        self._last = self._entries[-1] if self._entries else None
        if entry.kind not in self._guarded:
            self._unique.discard((entry.kind, entry.reference))

    def _apply(self, entry: Entry) -> None:
        for p in entry.postings:
            self._balances[p.account] += p.amount
        self._count += 1
        self._last = entry
        if self._retain:
            self._entries.append(entry)

    def check(self) -> list[str]:
        """Problems found by rebuilding every balance from the journal; empty when sound.

        Without retained entries only the balances' own invariants are checked (the
        store checks the journal itself).
        """
        if not self._retain:
            return _balance_problems(self._balances)
        rebuilt: dict[Account, int] = defaultdict(int)
        problems = []
        for entry in self._entries:
            if sum(p.amount for p in entry.postings) != 0:
                problems.append(f"entry {entry.entry_id} does not balance")
            for p in entry.postings:
                rebuilt[p.account] += p.amount
        for account in set(rebuilt) | set(self._balances):
            if rebuilt.get(account, 0) != self._balances.get(account, 0):
                problems.append(
                    f"{account}: stored {self._balances.get(account, 0)}, journal {rebuilt.get(account, 0)}"
                )
            if rebuilt.get(account, 0) < 0 and not account.may_go_negative:
                problems.append(f"{account} is negative")
        if sum(rebuilt.values()) != 0:
            problems.append("balances do not sum to zero")
        return problems


def _balance_problems(balances: Mapping[Account, int]) -> list[str]:
    problems = [f"{a} is negative" for a, b in balances.items() if b < 0 and not a.may_go_negative]
    if sum(balances.values()) != 0:
        problems.append("balances do not sum to zero")
    return problems
