"""Copy a SQLite WAL back into its database on a thread of its own, not in a commit.

By default the connection whose commit takes the WAL past 1,000 pages runs the
checkpoint there and then: two fsyncs and the page copies, some 5 ms on this machine,
inside a commit that otherwise takes half a millisecond. The hot writer (``batched.py``)
commits several times per request, so about one commit in a hundred stalled, and every
hold and capture queued behind it waited: it was most of the gateway's added p99 at one
request at a time. The hot writer's connection turns that off (``wal_autocheckpoint=0``)
and this thread checkpoints instead, on its own connection, in PASSIVE mode: it never
waits for the writer or the readers and never blocks them.

A PASSIVE checkpoint copies what the WAL holds when it starts; SQLite starts the WAL
over (instead of growing it) only once a checkpoint has caught up with every frame, and
under a steady stream of commits the thread may never quite catch up. So once the WAL
holds ``restart_pages`` the writer is asked to run one checkpoint itself, between its own
transactions, when its queue is empty: nothing can commit during it, so it catches up
(copying only what the thread had not yet copied) and the next commit starts the WAL
over. A writer that is never idle does it anyway once the WAL holds twice as much, and
so does a writer whose thread has not checkpointed for ``stale_commits`` commits
(starved of CPU), so the WAL stays bounded: at worst one short stall per
``restart_pages`` of writes, against one per 1,000 pages before.

Durability does not change: commits still reach the WAL in order, and a checkpoint
fsyncs the WAL before it overwrites any page of the database, as SQLite's own does.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

log = logging.getLogger("tessera.store.checkpoints")
PAGE_BYTES = 4096  # SQLite's default page size, which our databases use


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When to checkpoint: after ``every_commits`` commits or ``every_s`` seconds with at
    least one, whichever comes first; the writer catches up once the WAL holds
    ``restart_pages`` (when idle) or twice that (at once)."""

    every_commits: int = 100
    every_s: float = 0.5
    restart_pages: int = 4_096  # 16 MiB of 4 KiB pages; a WAL started over is cut back to it
    # With no checkpoint by either for this many commits (the thread starved of CPU), the
    # writer catches up by its own count.
    stale_commits: int = 400


class WalCheckpointer:
    """One thread checkpointing the database at ``path`` while writers go on.

    The writer's connection is set up by ``configure_writer``; the writer calls
    ``committed()`` after each commit (it only counts) and, between transactions,
    ``writer_should_checkpoint(idle)``; when that is true it runs a PASSIVE checkpoint on
    its own connection through ``writer_catch_up``. ``close()`` runs a last checkpoint
    and ends the thread."""

    def __init__(self, path: str, policy: CheckpointPolicy | None = None) -> None:
        self.path = path
        self.policy = policy or CheckpointPolicy()
        self.checkpoints = 0  # checkpoints this thread ran
        self.catch_ups = 0  # checkpoints the writer ran
        self.last: tuple[int, int, int] | None = None  # (busy, WAL pages, pages copied)
        self._wal_pages = 0  # as of the last checkpoint
        self._commits = 0  # since the last checkpoint, this thread's or the writer's
        self._wake = threading.Event()
        self._running = threading.Lock()  # one checkpoint at a time, this thread's or the writer's
        self._closing = False
        self._thread = threading.Thread(
            target=self._serve, name="tessera-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def configure_writer(self, dbapi_connection: sqlite3.Connection) -> None:
        """The writer's connection: no checkpoint inside its commits, and a WAL that
        starts over cut back to ``restart_pages`` rather than kept at its peak."""
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute(f"PRAGMA journal_size_limit={self.policy.restart_pages * PAGE_BYTES}")
        cursor.close()

    def committed(self) -> None:
        """One more commit in the WAL (a plain counter: a lost increment costs nothing)."""
        self._commits += 1
        if self._commits >= self.policy.every_commits:
            self._wake.set()

    def writer_should_checkpoint(self, idle: bool) -> bool:
        """Whether the writer should catch up now (``idle``: nothing is waiting for it)."""
        pages = self._wal_pages
        limit = self.policy.restart_pages
        stale = self._commits >= self.policy.stale_commits
        return stale or pages >= 2 * limit or (idle and pages >= limit)

    def writer_catch_up(self, checkpoint: Callable[[], tuple[int, int, int]]) -> None:
        """Run the writer's ``checkpoint`` (its own connection's PASSIVE checkpoint, giving
        ``(busy, WAL pages, pages copied)``) once this thread's is done: two at once
        would leave one of them busy, and the WAL would not start over."""
        with self._running:
            busy, pages, copied = checkpoint()
        self.catch_ups += 1
        self._commits = 0
        if not busy and copied == pages:
            self._wal_pages = 0  # the next commit starts the WAL over

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _serve(self) -> None:
        try:
            # mode=rw: never create the file (the engine made it, private, before).
            conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True)
        except sqlite3.Error as exc:
            log.warning(
                "cannot open %s for checkpoints (%s); writers' WAL may grow", self.path, exc
            )
            return
        try:
            while True:
                self._wake.wait(self.policy.every_s)
                self._wake.clear()
                closing = self._closing
                if self._commits or closing:  # and always a last one on close
                    self._commits = 0
                    self._checkpoint(conn)
                if closing:
                    return
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            with self._running:
                busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            self.last = (busy, pages, copied)
            self._wal_pages = max(pages, 0)  # -1: not in WAL mode
        except sqlite3.Error as exc:  # a locked or vanished database: try again next time
            log.warning("checkpoint of %s failed: %s", self.path, exc)
