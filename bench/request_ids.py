"""Request-log writes with random request ids against time-ordered ones.

Every answer writes rows keyed by its request id: the request log's, the receipt's, and
two journal entries whose reference it is. With random ids each new key lands on a random
page of its index, so a commit writes about one page per row of every such index, and on
a table larger than the memory it has that page must first be read from disk. Ids that
begin with the time (the gateway's, gateway/http_limits.py) land at the right edge of the
index, where the last commit left its page.

For each scheme: a fresh SQLite file (WAL, the store's own pragmas and writer thread) is
filled with ``--rows`` request-log rows of that scheme, then ``--measure`` more are
written in batches of ``--batch`` (the group commit at c=64 writes about that many),
through the gateway's own ``RequestLog.write_many``. Per scheme: rows/s, this process's
CPU per row (every thread: the writer and the checkpoint thread too) and bytes written per
row (``wchar`` in /proc/self/io: the WAL frames and the checkpoint's copies). The page
cache holds the whole file here, so no read reaches the disk and the rows/s gap
understates what a table larger than memory would see. Run::

    .venv/bin/python bench/request_ids.py [--rows N] [--measure N] [--batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]

from tessera.gateway.http_limits import new_request_id  # noqa: E402
from tessera.store.engine import create_engine, database_url_for  # noqa: E402
from tessera.store.migrate import upgrade_to_head  # noqa: E402
from tessera.store.requests_log import RequestLog, RequestRecord  # noqa: E402

PREFILL_BATCH = 5_000


def random_id() -> str:
    """The gateway's ids before they began with the time: 24 random hex characters."""
    return "req_" + secrets.token_hex(12)


SCHEMES: dict[str, Callable[[], str]] = {"random": random_id, "time-ordered": new_request_id}


@dataclass(frozen=True, slots=True)
class Row:
    scheme: str
    rows: int
    wall_s: float
    cpu_s: float
    written_bytes: int

    @property
    def per_s(self) -> float:
        return self.rows / self.wall_s


def record(request_id: str, n: int) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        api_key_id=f"key_{n % 50:04d}",
        endpoint="chat.completions",
        model="tessera-tiny",
        provider_id=f"{n % 20:064x}",
        status="ok",
        error_code=None,
        prompt_tokens=23,
        completion_tokens=4,
        latency_ms=12,
        ttft_ms=10,
        created_at=datetime.now(UTC),
        account_id=f"acct_{n % 50:016x}",
        cost=96_000,
        price_input_per_mtok=100,
        price_output_per_mtok=300,
    )


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


async def measure(
    scheme: str, make_id: Callable[[], str], args: argparse.Namespace, progress: Progress
) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url_for(Path(tmp))
        await upgrade_to_head(url)
        engine = create_engine(url)
        try:
            log = RequestLog(engine)
            task = progress.add_task(f"{scheme}: filling", total=args.rows + args.measure)
            n = 0
            while n < args.rows:
                size = min(PREFILL_BATCH, args.rows - n)
                await log.write_many([record(make_id(), n + i) for i in range(size)])
                n += size
                progress.update(task, completed=n)
            progress.update(task, description=f"{scheme}: measuring")
            batches = [
                [record(make_id(), n + b * args.batch + i) for i in range(args.batch)]
                for b in range(args.measure // args.batch)
            ]
            wall, cpu, wrote = time.perf_counter(), time.process_time(), written_bytes()
            for batch in batches:
                await log.write_many(batch)
                progress.advance(task, len(batch))
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            wrote = written_bytes() - wrote
        finally:
            await engine.dispose()
    return Row(scheme, len(batches) * args.batch, wall, cpu, wrote)


def report(rows: list[Row], args: argparse.Namespace, console: Console) -> None:
    table = Table(
        title=f"Request-log rows written in batches of {args.batch}, after {args.rows:,} "
        "rows of the same scheme",
        caption="vs random: against random ids in the same run",
    )
    for column in (
        "ids",
        "rows/s",
        "vs random",
        "CPU µs/row",
        "vs random",
        "bytes written/row",
        "vs random",
    ):
        table.add_column(column, justify="right")
    base = rows[0]
    for row in rows:
        cpu_us, base_cpu_us = 1e6 * row.cpu_s / row.rows, 1e6 * base.cpu_s / base.rows
        per_row, base_per_row = row.written_bytes / row.rows, base.written_bytes / base.rows
        table.add_row(
            row.scheme,
            f"{row.per_s:,.0f}",
            f"{row.per_s / base.per_s:.2f}x",
            f"{cpu_us:.1f}",
            f"{cpu_us / base_cpu_us:.2f}x",
            f"{per_row:,.0f}",
            f"{per_row / base_per_row:.2f}x",
        )
    console.print(table)


async def run(args: argparse.Namespace, console: Console) -> list[Row]:
    rows = []
    with Progress(console=console, transient=True) as progress:
        for scheme, make_id in SCHEMES.items():
            rows.append(await measure(scheme, make_id, args, progress))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000, help="rows written first")
    parser.add_argument("--measure", type=int, default=20_000, help="rows measured")
    parser.add_argument("--batch", type=int, default=64, help="rows per measured commit")
    args = parser.parse_args()
    if args.rows < 0 or args.batch < 1 or args.measure < args.batch:
        parser.error("--rows must be >= 0 and --measure >= --batch >= 1")
    console = Console(width=None if sys.stdout.isatty() else 140)
    report(asyncio.run(run(args, console)), args, console)


if __name__ == "__main__":
    main()
