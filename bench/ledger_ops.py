"""Ledger operations per second: how far one ledger owner carries a cluster of gateways.

Every paid request moves money twice: a hold before the work (``reserve`` + ``confirm``,
answered once the hold is durable) and a capture after it (``capture`` + ``stored``).
In a cluster one replica owns the ledger and the others pay through it over NATS, so the
owner's rate of these pairs bounds the cluster. This measures that rate, with
``--concurrency`` requests in flight at once (asyncio tasks, each looping hold then
capture on the next of ``--accounts`` funded accounts) for ``--duration`` s after a
``--warmup``, on:

- **local**: ``Payments`` on the owner's own Bookkeeper (the baseline);
- **over NATS**: ``RemoteMoney`` talking to a ``LedgerService`` through a private
  nats-server, on two separate connections as two replicas would have;
- **hot account**: over NATS, every request on one account.

Each row set runs on a fresh PostgreSQL database (127.0.0.1:5432) and again on SQLite in a
temporary directory. Per row: pairs/s, ledger operations/s (2 per pair), p50/p99 of the
hold and of the capture (until stored), the ratio against local, where the time goes (the
journal writer stores one batch at a time: entries per commit, mean commit time and the
share of the run it was busy committing) and CPU per pair (this process; nats-server; all postgres processes, which other
users of the server would inflate). Both "replicas" share this process and the machine's
cores with the database, so the NATS rows include the paying side's own work too. At the
end the book and the stored journal are checked and the held total must be 0.

Run::

    .venv/bin/python bench/ledger_ops.py [--duration S] [--concurrency C] [--accounts N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.status import Status
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from tessera.gateway.bookkeeper import Bookkeeper  # noqa: E402
from tessera.gateway.ledger_service import LedgerService  # noqa: E402
from tessera.gateway.nats_bus import NatsBus  # noqa: E402
from tessera.gateway.payments import Payer, Payments  # noqa: E402
from tessera.gateway.remote_money import RemoteMoney  # noqa: E402
from tessera.ledger.accounts import TOKEN, AccountKind  # noqa: E402
from tessera.ledger.book import BookPolicy  # noqa: E402
from tessera.ledger.journal import Entry  # noqa: E402
from tessera.market.registry import ProviderRegistry  # noqa: E402
from tessera.market.routing import RouteRequest  # noqa: E402
from tessera.market.stake_policy import StakePolicy  # noqa: E402
from tessera.protocol.wire import (  # noqa: E402
    Capabilities,
    ChatMessage,
    Hardware,
    Job,
    ModelOffer,
    SamplingParams,
)
from tessera.store.engine import create_engine, database_url_for  # noqa: E402
from tessera.store.ledger import LedgerStore  # noqa: E402
from tessera.store.migrate import upgrade_to_head  # noqa: E402

from support.databases import _admin_execute, _find_admin_user  # noqa: E402
from support.nats_server import NatsServer  # noqa: E402

PROVIDER = "ab" * 32
OFFER = ModelOffer(
    name="m",
    weights_sha256="ab" * 32,
    kind="text",
    context_length=1024,
    price_input_per_mtok=1_000 * 1_000_000,
    price_output_per_mtok=2_000 * 1_000_000,
)
JOB = Job(
    job_id="j1",
    model="m",
    kind="chat",
    messages=[ChatMessage(role="user", content="hi")],
    params=SamplingParams(max_tokens=8),
)
ROUTE = RouteRequest(model="m")
FUNDS = 1_000 * TOKEN  # per account: far more than a run spends, even on one account
Money = Payments | RemoteMoney


@dataclass
class Row:
    store: str
    path: str
    pairs_s: float
    holds: list[float]  # ms
    captures: list[float]  # ms
    errors: int
    cpu_ms: tuple[float, float, float]  # per pair: this process, nats-server, postgres
    per_commit: float  # journal entries stored per commit
    commit_ms: float  # mean time of one journal append (one transaction)
    busy: float  # share of the window the journal writer spent appending


class TimedStore:
    """The LedgerStore, timing each append (one transaction of the journal writer)."""

    def __init__(self, inner: LedgerStore) -> None:
        self.inner = inner
        self.busy_s = 0.0
        self.commits = 0

    async def load(self) -> list[Entry]:
        return await self.inner.load()

    async def check(self) -> list[str]:
        return await self.inner.check()

    async def append(self, entries: list[Entry]) -> None:
        started = time.perf_counter()
        try:
            await self.inner.append(entries)
        finally:
            self.busy_s += time.perf_counter() - started
            self.commits += 1


async def quietly(close: Callable[[], Awaitable[None]]) -> None:
    """Close a bus without its "disconnected; reconnecting" warning (it is not a failure)."""
    nats_log = logging.getLogger("tessera.gateway.nats")
    level = nats_log.level
    nats_log.setLevel(logging.ERROR)
    try:
        await close()
    finally:
        nats_log.setLevel(level)


def registry() -> ProviderRegistry:
    made = ProviderRegistry()
    hardware = Hardware(cpu="bench", cpu_cores=1, ram_bytes=1)
    caps = Capabilities(
        public_key=PROVIDER,
        agent_version="bench",
        models=[OFFER],
        hardware=hardware,
        region="US",
        max_concurrent_jobs=4,
    )
    made.add(PROVIDER, caps, now=0.0)
    return made


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (those gone count 0)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(
    store: str, path: str, money: Money, payers: list[Payer], keeper: Bookkeeper,
    timed: TimedStore, nats_pid: int, args: argparse.Namespace, status: Status, console: Console,
) -> Row:  # fmt: skip
    """``args.concurrency`` loops of hold then capture; measured after the warm-up."""
    loop = asyncio.get_running_loop()
    since = float("inf")  # the measured window's start; pairs begun before it are warm-up
    counting = True
    holds: list[float] = []
    captures: list[float] = []
    done = errors = 0
    stop = False
    next_payer = itertools.cycle(payers)
    tag = f"{store[:2]}-{path.replace(' ', '')}"

    async def worker(w: int) -> None:
        nonlocal done, errors
        for n in itertools.count():
            if stop:
                return
            started = loop.time()
            try:
                charge = await money.reserve(next(next_payer), f"{tag}-{w}-{n}", JOB, ROUTE)
                await money.confirm(charge)
                held = loop.time()
                money.capture(charge, OFFER, PROVIDER, 3, 1)
                await money.stored(charge)
            except Exception as exc:
                errors += 1
                if errors == 1:
                    console.print(f"[red]{store} · {path}: first error: {exc!r}[/]")
                await asyncio.sleep(0.01)
                continue
            ended = loop.time()
            if counting and started >= since:
                done += 1
                holds.append((held - started) * 1000)
                captures.append((ended - held) * 1000)

    def gauges() -> tuple[float, float, float, float, int, int]:
        cpu = time.process_time(), cpu_s([nats_pid]), cpu_s(postgres_pids())
        return *cpu, timed.busy_s, timed.commits, keeper.writer.written

    tasks = [asyncio.create_task(worker(w)) for w in range(args.concurrency)]
    try:
        await asyncio.sleep(args.warmup)
        before, since = gauges(), loop.time()
        while (elapsed := loop.time() - since) < args.duration:
            status.update(f"{store} · {path}: {elapsed:.0f}/{args.duration:.0f} s, {done} pairs")
            await asyncio.sleep(min(0.5, args.duration - elapsed))
        after, seconds, counting, stop = gauges(), loop.time() - since, False, True
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    used = [(a - b) * 1000 / max(done, 1) for a, b in zip(after[:3], before[:3], strict=True)]
    busy, commits = after[3] - before[3], max(after[4] - before[4], 1)
    return Row(
        store, path, done / seconds, holds, captures, errors, (used[0], used[1], used[2]),
        (after[5] - before[5]) / commits, busy * 1000 / commits, busy / seconds,
    )  # fmt: skip


async def bench_store(
    store: str, url: str, server: NatsServer, args: argparse.Namespace, status: Status,
    console: Console,
) -> list[Row]:  # fmt: skip
    """The three rows on one database, then its checks."""
    status.update(f"{store}: migrating and funding {args.accounts:,} accounts")
    await upgrade_to_head(url)
    payers = [Payer(f"acct_{i:016x}", f"key_{i:016x}") for i in range(1, args.accounts + 1)]
    rows: list[Row] = []
    async with contextlib.AsyncExitStack() as stack:  # closes all, in reverse, on any exit
        engine = create_engine(url)
        stack.push_async_callback(engine.dispose)
        timed = TimedStore(LedgerStore(engine))
        keeper, _ = await Bookkeeper.open(timed, BookPolicy())
        stack.push_async_callback(keeper.close)
        buses = [await NatsBus.connect(server.url, f"bench {n}") for n in ("owner", "replica")]
        for bus in buses:
            stack.push_async_callback(quietly, bus.close)
        service = LedgerService(buses[0], keeper, "owner")
        stack.push_async_callback(service.close)
        remote = RemoteMoney(buses[1], registry(), StakePolicy(), replica_id="replica")
        stack.push_async_callback(remote.close)
        local = Payments(keeper, registry(), StakePolicy())
        mints = (keeper.mint(p.account_id, FUNDS, f"dep-{p.account_id}") for p in payers)
        await asyncio.gather(*mints)
        await service.start()
        await remote.start()
        pid = server.proc.pid if server.proc else 0
        for path, money, who in (
            ("local", local, payers),
            ("over NATS", remote, payers),
            ("hot account", remote, payers[:1]),
        ):
            row = await drive(store, path, money, who, keeper, timed, pid, args, status, console)
            rows.append(row)
        status.update(f"{store}: checking the book and the stored journal")
        await remote.close()  # every settlement landed
        await service.close()
        await keeper.flush()
        problems = keeper.book.check() + await timed.check()
    held = sum(
        units
        for account, units in keeper.book.ledger.balances().items()
        if account.kind is AccountKind.HOLD
    )
    verdict = "[green]clean[/]" if not problems else f"[red]{'; '.join(problems[:5])}[/]"
    held_note = f"[green]{held}[/]" if held == 0 else f"[red]{held}[/]"
    console.print(
        f"{store}: book + journal check {verdict}; held total {held_note} units, "
        f"open holds {len(keeper.book.open_holds())}; {keeper.writer.written:,} entries stored"
    )
    return rows


async def run(args: argparse.Namespace, console: Console) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, console.status("starting…") as status:
        server = NatsServer(Path(tmp) / "nats")
        try:
            server.start()
            user = await _find_admin_user()
            name = f"tessera_bench_{secrets.token_hex(6)}"
            await _admin_execute(user, f'CREATE DATABASE "{name}"')
            try:
                url = f"postgresql://{user}@127.0.0.1:5432/{name}"
                rows += await bench_store("PostgreSQL", url, server, args, status, console)
            finally:
                await _admin_execute(user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            sqlite_dir = Path(tmp) / "sqlite"
            sqlite_dir.mkdir()
            url = database_url_for(sqlite_dir)
            rows += await bench_store("SQLite", url, server, args, status, console)
        finally:
            server.stop()
    return rows


def report(rows: list[Row], args: argparse.Namespace, console: Console) -> None:
    table = Table(
        title=f"Ledger operations: {args.concurrency} requests in flight, {args.accounts:,} "
        f"accounts, {args.duration:g} s per row; a pair = one hold + one capture",
        caption="hold = reserve+confirm, capture = capture+stored (ms); per commit: journal entries "
        "in one append; CPU ms per pair: this process·nats-server·all postgres processes",
    )
    for column in (
        "store", "path", "pairs/s", "ops/s", "vs local", "hold p50", "hold p99",
        "capture p50", "capture p99", "errors", "per commit", "commit ms",
        "writer busy", "CPU ms/pair",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("store", "path") else "right")
    local = {r.store: r.pairs_s for r in rows if r.path == "local"}
    for r in rows:
        ratio = r.pairs_s / local[r.store] if local.get(r.store) else float("nan")
        table.add_row(
            r.store, r.path, f"{r.pairs_s:,.0f}", f"{2 * r.pairs_s:,.0f}", f"{ratio:.2f}x",
            *(f"{percentile(xs, q):.1f}" for xs in (r.holds, r.captures) for q in (0.5, 0.99)),
            str(r.errors), f"{r.per_commit:.1f}", f"{r.commit_ms:.1f}", f"{r.busy:.0%}",
            "·".join(f"{c:.2f}" for c in r.cpu_ms),
        )  # fmt: skip
    console.print(table)
    for r in rows:
        if r.store == "PostgreSQL" and r.path == "over NATS":
            machines = r.pairs_s / args.gateway_rps
            console.print(
                f"Projection: one owner on PostgreSQL settles {r.pairs_s:,.0f} paid requests/s "
                f"over NATS; at {args.gateway_rps:,.0f} requests/s per gateway machine it "
                f"carries about {machines:.1f} gateway machines (this machine's cores also ran "
                "the paying replica and the database, so the owner alone would carry more)."
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="measured s per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s per row")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--accounts", type=int, default=1_000, help="funded accounts")
    parser.add_argument("--gateway-rps", type=float, default=929.0, help="one gateway's requests/s")
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:
        console = Console(width=190)  # a log or a pipe: keep the table on one line per row
    rows = asyncio.run(run(args, console))
    report(rows, args, console)


if __name__ == "__main__":
    main()
