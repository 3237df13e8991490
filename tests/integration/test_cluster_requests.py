"""When a replica dies, the ledger's owner marks the requests it left in flight, and never
one a live replica is still running (or one it could not ask about)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.gateway.bus import LocalBus
from tessera.gateway.cluster_requests import RunningDesk, sweep_left_in_flight
from tessera.store.requests_log import RequestLog, RequestLogWriter, in_flight_record

pytestmark = pytest.mark.integration

KEY = "key_0123456789abcdef"
ACCOUNT = "acct_0123456789abcdef"


def started(index: int):  # type: ignore[no-untyped-def]
    return in_flight_record(f"req_{index:06d}", KEY, "chat.completions", "tiny", ACCOUNT)


async def test_the_owner_marks_only_what_no_live_replica_runs(store_engine: AsyncEngine) -> None:
    log = RequestLog(store_engine)
    # What each replica's writer knows it runs (their rows are written here directly).
    owner, live = RequestLogWriter(log), RequestLogWriter(log)
    owner.started(started(1))  # the owner's own, running
    live.started(started(2))  # running on the live replica
    await log.write_many([started(1), started(2), started(3)])  # 3: the dead replica's
    bus = LocalBus()
    desk = RunningDesk(bus, "b", live)
    await desk.start()
    assert await sweep_left_in_flight(bus, ["b"], owner, log) == 1
    statuses = {i: (await log.get(f"req_{i:06d}")).status for i in (1, 2, 3)}  # type: ignore[union-attr]
    assert statuses == {1: "in_flight", 2: "in_flight", 3: "interrupted"}
    # A live replica that cannot say what it runs: nothing is marked this time.
    await log.write_many([started(4)])
    assert await sweep_left_in_flight(bus, ["b", "silent"], owner, log) is None
    assert (await log.get("req_000004")).status == "in_flight"  # type: ignore[union-attr]
    await desk.close()
    await bus.close()
