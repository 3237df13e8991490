"""Owning the database's ledger before the book is opened, or waiting as a standby.

See :mod:`tessera.store.ledger_owner` for why one gateway owns a database's ledger. A
gateway started with ``--standby`` waits (its HTTP port closed, so a load balancer's
health check keeps traffic away) until the owner stops or dies, then takes over: it
replays the journal, releases the holds the dead owner left open, and serves. Ctrl-C or
SIGTERM while it waits stops it without taking over.

An owner checks every few seconds that the lock is still its own (a PostgreSQL session can
end under a live process: a restarted server, a cut connection). If it is not, another
gateway may already own the ledger, so this one stops writing the journal at once: money
stops moving here (503 ``ledger_unavailable``) until an operator restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

from tessera.errors import ConfigError
from tessera.store.ledger_owner import LedgerOwnerLock

log = logging.getLogger("tessera.gateway.ledger")


async def own_ledger(lock: LedgerOwnerLock, *, standby: bool, poll_s: float) -> None:
    """Hold ``lock`` before returning: at once, or (``standby``) once its holder has gone.
    ConfigError naming the holder when it is taken and this gateway is no standby."""
    if await lock.try_acquire():
        return
    holder = await lock.holder() or "another gateway"
    if not standby:
        raise ConfigError(
            f"{holder} is already running on this database and owns its ledger; two "
            "gateways on one ledger would release each other's holds. Stop it first, point "
            "this one at another database, or start it with --standby to take over when "
            "the owner stops."
        )
    log.warning("standby: %s owns the ledger; this gateway takes over when it stops", holder)
    with _stop_on_signals():
        # Polled: neither flock nor an advisory lock tells a waiter it came free
        # without blocking a thread or a pooled connection for as long as it waits.
        while True:
            await asyncio.sleep(poll_s)
            if await lock.try_acquire():
                break
    log.warning("standby: the owner is gone; this gateway now owns the ledger")


RESTART_IT = "restart this one, as --standby if another is running"


async def watch_ownership(
    lock: LedgerOwnerLock,
    on_lost: Callable[[str], None],
    interval_s: float,
    next_step: str = RESTART_IT,
    check_now: asyncio.Event | None = None,
) -> None:
    """Check ``lock`` every ``interval_s``, and at once whenever ``check_now`` is set (the
    journal's write fence refused an append: the lock is likely gone); once it is lost,
    call ``on_lost(why)`` and end."""
    check_now = check_now or asyncio.Event()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(check_now.wait(), interval_s)
        check_now.clear()
        if not await lock.still_held():
            why = (
                "this gateway no longer holds the ledger's ownership lock (its database "
                f"session ended) and another gateway may own the ledger now; {next_step}"
            )
            log.critical("%s", why)
            on_lost(why)
            return


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM end a waiting standby at once, exit status 0 (the server's own
    handlers are put back after the wait).

    It exits the process rather than failing the start: a standby holds nothing yet (no
    ledger, no lock, no client), and a failed start would print a traceback for what is
    an operator's ordinary stop."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    saved = {sig: signal.getsignal(sig) for sig in signals}

    def leave(sig: signal.Signals) -> None:
        log.warning("standby: %s before taking over the ledger; stopping", sig.name)
        logging.shutdown()
        os._exit(0)

    try:
        for sig in signals:
            loop.add_signal_handler(sig, leave, sig)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        saved = {}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
