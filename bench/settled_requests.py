"""Settled requests per second: what making every hold and capture durable costs.

One request is what the gateway does to pay for work: hold the worst case and wait until
the hold is stored, then capture the real cost and wait until the capture is stored.
C concurrent asyncio workers settle N requests against

- the in-memory Book alone (the baseline: no database; an event-loop hop at each point
  where the gateway waits for the journal, so workers interleave as in the gateway),
- SQLite (a file in a temporary directory, WAL as our engine sets it up: the hot
  writer's commits never checkpoint, a thread of its own does, store/wal_checkpoints.py),
- SQLite as it was before that thread (``sqlite, ckpt in commit``): SQLite's default,
  where the commit that takes the WAL past 1,000 pages copies it back there and then,
- PostgreSQL (a fresh database on 127.0.0.1:5432, dropped afterwards; skipped with a
  note if the server is down), as the gateway writes it: holding the ledger's ownership
  lock, every append checks in its transaction that the lock is still held (the write
  fence, store/ledger.py),
- PostgreSQL without that check (``postgresql, no fence``), as before the fence.

Every row starts on an empty journal. The journal writer group-commits: entries that
arrive while a batch is written share the next transaction, so entries per batch should
grow with C and throughput with it. After each database row the stored journal must equal
the in-memory one and ``LedgerStore.check()`` must be clean, or the run aborts. Run::

    .venv/bin/python bench/settled_requests.py [--requests N] [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from tessera.gateway.bookkeeper import Bookkeeper  # noqa: E402
from tessera.ledger.accounts import TOKEN  # noqa: E402
from tessera.ledger.book import Book, BookPolicy  # noqa: E402
from tessera.ledger.journal import Entry  # noqa: E402
from tessera.ledger.pricing import Price  # noqa: E402
from tessera.ledger.spend_caps import SpendCaps  # noqa: E402
from tessera.store import batched  # noqa: E402
from tessera.store.engine import create_engine, database_url_for  # noqa: E402
from tessera.store.errors import PG_START_HINT  # noqa: E402
from tessera.store.ledger import LedgerStore  # noqa: E402
from tessera.store.ledger_owner import ledger_owner_lock  # noqa: E402
from tessera.store.migrate import upgrade_to_head  # noqa: E402

from support.databases import PG_HOST, PG_PORT, fresh_postgres_database  # noqa: E402

SERVICES_DOC = "/work/shared/services.md"
PRICE = Price(input_per_mtok=TOKEN // 5, output_per_mtok=3 * TOKEN // 5)
PROMPT_TOKENS = 200
MAX_TOKENS = 256
HOLD = PRICE.worst_case(PROMPT_TOKENS, MAX_TOKENS)
PROVIDER = "ab" * 32
KEY = "key_bench"
CAPS = SpendCaps()
MEMO = {"model": "tiny"}
WARMUP_REQUESTS = 100
OLD_SQLITE = "sqlite, ckpt in commit"
UNFENCED_PG = "postgresql, no fence"

# settle(worker, request_id): one paid request, done when its capture is stored.
Settle = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Row:
    backend: str
    workers: int
    requests: int
    wall_s: float
    latencies_ms: list[float]
    entries: int = 0
    batches: int = 0

    @property
    def per_s(self) -> float:
        return self.requests / self.wall_s


def account(worker: int) -> str:
    return f"acct_{worker:016x}"


def used_tokens(request_id: str) -> int:
    """A completion length between 1 and MAX_TOKENS, varied so costs differ."""
    return 1 + int(request_id.rsplit("-", 1)[1]) * 37 % MAX_TOKENS


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(
    requests: int, workers: int, settle: Settle, prefix: str
) -> tuple[float, list[float]]:
    """``workers`` tasks settle ``requests`` requests between them; (wall seconds, latencies)."""
    latencies: list[float] = []
    issued = 0

    async def worker(index: int) -> None:
        nonlocal issued
        while issued < requests:
            request_id = f"{prefix}-{issued}"
            issued += 1
            started = time.perf_counter()
            await settle(index, request_id)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(workers)))
    return time.perf_counter() - started, latencies


async def memory_row(requests: int, workers: int) -> Row:
    book = Book(BookPolicy())
    for worker in range(workers):
        book.mint(
            account(worker), HOLD * (requests + WARMUP_REQUESTS), f"dep-{worker}", time.time()
        )

    async def settle(worker: int, request_id: str) -> None:
        book.hold(account(worker), KEY, CAPS, request_id, HOLD, time.time(), MEMO)
        await asyncio.sleep(0)  # where the gateway waits for the hold to be stored
        book.capture(
            request_id, PRICE, PROMPT_TOKENS, used_tokens(request_id), PROVIDER, time.time()
        )
        await asyncio.sleep(0)  # and for the capture

    await drive(WARMUP_REQUESTS, workers, settle, "warm")
    wall_s, latencies = await drive(requests, workers, settle, "req")
    return Row("memory", workers, requests, wall_s, latencies)


async def database_row(
    backend: str, url: str, requests: int, workers: int, fenced: bool = True
) -> Row:
    await upgrade_to_head(url)
    engine = create_engine(url)
    owner = ledger_owner_lock(engine, "bench")
    try:
        if not await owner.try_acquire():
            raise RuntimeError(f"{backend}: the ledger's ownership lock is taken")
        store = LedgerStore(engine, fence=owner.write_fence() if fenced else None)
        keeper, _ = await Bookkeeper.open(store, BookPolicy())
        posted: list[Entry] = []  # the book need not keep its journal; its listeners see it
        keeper.book.listeners.append(posted.append)
        try:
            for worker in range(workers):
                funds = HOLD * (requests + WARMUP_REQUESTS)
                await keeper.mint(account(worker), funds, f"dep-{worker}")

            async def settle(worker: int, request_id: str) -> None:
                await keeper.hold(account(worker), KEY, CAPS, request_id, HOLD, MEMO)
                _, stored = keeper.capture(
                    request_id, PRICE, PROMPT_TOKENS, used_tokens(request_id), PROVIDER
                )
                if stored is None:
                    raise RuntimeError(f"{request_id}: the hold was gone before its capture")
                await keeper.durable(stored)

            await drive(WARMUP_REQUESTS, workers, settle, "warm")
            written, batches = keeper.writer.written, keeper.writer.batches
            wall_s, latencies = await drive(requests, workers, settle, "req")
            entries = keeper.writer.written - written
            batches = keeper.writer.batches - batches
            await keeper.flush()
            problems = await store.check() + keeper.book.check()
            if await store.load() != posted:
                problems.append("the stored journal differs from the in-memory one")
            if problems:
                raise RuntimeError(f"{backend}: the journal is unsound: {problems[:5]}")
        finally:
            await keeper.close()
    finally:
        await owner.release()
        await engine.dispose()
    return Row(backend, workers, requests, wall_s, latencies, entries, batches)


@contextlib.contextmanager
def checkpoints_in_commits() -> Iterator[None]:
    """The hot writer without its checkpoint thread: SQLite's own auto-checkpoint runs
    inside whichever commit takes the WAL past 1,000 pages, as before that thread."""
    own = batched._checkpointer_for
    batched._checkpointer_for = lambda engine: None
    try:
        yield
    finally:
        batched._checkpointer_for = own


async def postgres_admin() -> str | None:
    """A role that may create databases, or None if the server does not answer."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            pass
    except OSError:
        return None
    for user in ("postgres", getpass.getuser()):
        try:
            conn = await asyncpg.connect(
                host=PG_HOST, port=PG_PORT, user=user, database="postgres", timeout=10
            )
        except (OSError, asyncpg.PostgresError):
            continue
        await conn.close()
        return user
    return None


async def measure(requests: int, concurrency: list[int], console: Console) -> list[Row]:
    admin = await postgres_admin()
    if admin is None:
        console.print(
            f"[yellow]PostgreSQL is not answering on {PG_HOST}:{PG_PORT}: its rows are "
            f"skipped. Start it with `{PG_START_HINT}` (see {SERVICES_DOC}) and run again."
        )
    rows = []
    with console.status("measuring…") as status:
        for workers in concurrency:
            status.update(f"memory, {workers} worker(s)…")
            rows.append(await memory_row(requests, workers))
            status.update(f"SQLite, {workers} worker(s)…")
            with tempfile.TemporaryDirectory() as tmp:
                url = database_url_for(Path(tmp))
                rows.append(await database_row("sqlite", url, requests, workers))
            status.update(f"SQLite with checkpoints in commits, {workers} worker(s)…")
            with tempfile.TemporaryDirectory() as tmp, checkpoints_in_commits():
                url = database_url_for(Path(tmp))
                rows.append(await database_row(OLD_SQLITE, url, requests, workers))
            if admin is not None:
                status.update(f"PostgreSQL, {workers} worker(s)…")
                async with fresh_postgres_database(admin) as url:
                    rows.append(await database_row("postgresql", url, requests, workers))
                status.update(f"PostgreSQL without the write fence, {workers} worker(s)…")
                async with fresh_postgres_database(admin) as url:
                    rows.append(
                        await database_row(UNFENCED_PG, url, requests, workers, fenced=False)
                    )
    return rows


def report(rows: list[Row], requests: int, console: Console) -> None:
    table = Table(
        title=f"Settled requests (durable hold + durable capture), {requests} per row",
        caption="vs memory: throughput against the in-memory Book at the same worker count; "
        f"'{OLD_SQLITE}': SQLite's own checkpoints, inside the commits (before the thread); "
        f"'{UNFENCED_PG}': appends that do not check the ownership lock (before the fence)",
    )
    for column in (
        "backend",
        "workers",
        "settled/s",
        "vs memory",
        "entries per batch",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    ):
        table.add_column(column, justify="right")
    baseline = {row.workers: row.per_s for row in rows if row.backend == "memory"}
    for row in rows:
        table.add_row(
            row.backend,
            str(row.workers),
            f"{row.per_s:,.0f}",
            f"{row.per_s / baseline[row.workers]:.3f}x",
            f"{row.entries / row.batches:.1f}" if row.batches else "—",
            f"{statistics.median(row.latencies_ms):.3f}",
            f"{percentile(row.latencies_ms, 0.99):.3f}",
            f"{percentile(row.latencies_ms, 0.999):.3f}",
            f"{max(row.latencies_ms):.3f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2_000, help="requests per row")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16, 64], help="worker counts"
    )
    args = parser.parse_args()
    if args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--requests and --concurrency must be positive")
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = time.perf_counter()
    rows = asyncio.run(measure(args.requests, args.concurrency, console))
    report(rows, args.requests, console)
    console.print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
