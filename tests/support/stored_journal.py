"""The journal a gateway stored, read from its database while the gateway may still run.

A capture reaches the journal a few milliseconds after its answer (the journal writer lets
it wait up to ``CAPTURE_LINGER_S`` to share the next entry's transaction), so a test that
has just received its last answer waits, within a bound, until every hold it can see has
been settled before it judges the settlements.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from tessera.ledger.escrow import CAPTURE, HOLD, RELEASE
from tessera.ledger.journal import Entry
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore


async def _stored_journal(data_dir: Path) -> tuple[list[Entry], list[str]]:
    engine = create_engine(database_url_for(data_dir))
    try:
        store = LedgerStore(engine)
        return await store.load(), await store.check()
    finally:
        await engine.dispose()


def stored_journal(data_dir: Path) -> tuple[list[Entry], list[str]]:
    """A gateway's journal as stored on disk, and the problems SQL finds in it."""
    return asyncio.run(_stored_journal(data_dir))


def unsettled(entries: list[Entry]) -> set[str]:
    settled = {e.reference for e in entries if e.kind in (CAPTURE, RELEASE)}
    return {e.reference for e in entries if e.kind == HOLD} - settled


def settled_journal(data_dir: Path, within_s: float = 5.0) -> tuple[list[Entry], list[str]]:
    """The stored journal once every hold in it is settled, or as it is after ``within_s``
    (the caller's assertions then say what is missing)."""
    deadline = time.monotonic() + within_s
    while True:
        entries, problems = stored_journal(data_dir)
        if not unsettled(entries) or time.monotonic() >= deadline:
            return entries, problems
        time.sleep(0.05)


def settlements(entries: list[Entry]) -> Counter[str]:
    return Counter(e.reference for e in entries if e.kind in (CAPTURE, RELEASE))
