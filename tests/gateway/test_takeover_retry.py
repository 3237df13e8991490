"""A replica that gets the ledger's lock but fails to take the ledger over (the database
went away again mid-replay) gives the lock back and keeps watching; it does not sit on
the lock, which would leave the cluster with no owner until it restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tessera.gateway.replica import watch_for_takeover
from tessera.store.engine import create_engine
from tessera.store.ledger_owner import ledger_owner_lock


async def test_a_failed_takeover_gives_the_lock_back_and_the_next_try_succeeds(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'tessera.db'}")
    ours = ledger_owner_lock(engine, "gw-ours")
    other = ledger_owner_lock(engine, "gw-other")
    tries: list[bool] = []  # one per takeover tried
    free_between: list[bool] = []

    async def take_over() -> None:
        tries.append(True)
        if len(tries) == 1:
            raise OSError("the database went away mid-replay")

    async def watch_the_lock_between_tries() -> None:
        while len(tries) < 2:
            if len(tries) == 1 and not free_between:  # after the failed try, before the next
                got = await other.try_acquire()
                free_between.append(got)
                if got:
                    await other.release()
            await asyncio.sleep(0.005)

    try:
        watcher = asyncio.create_task(watch_for_takeover(ours, take_over, poll_s=0.05))
        await asyncio.wait_for(asyncio.gather(watcher, watch_the_lock_between_tries()), 10)
        assert len(tries) == 2  # it tried again, and the second try ended the watch
        assert free_between == [True]  # the failed try gave the lock back
        assert await ours.still_held()  # and the successful one kept it
    finally:
        await ours.release()
        await other.release()
        await engine.dispose()
