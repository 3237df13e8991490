"""The rows a crash must not lose, in the store: requests in flight and open uptime epochs.

On SQLite and PostgreSQL. A request's in_flight row is replaced by its final record and
never the other way round, whatever the batching; the next start marks leftovers
interrupted, and a final record still coming (from another replica) replaces the mark. The open epochs round-trip through provider_uptime_progress.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.market.uptime import ProviderProgress
from tessera.store.requests_log import (
    GATEWAY_RESTARTED,
    NOT_RECORDED,
    REPLICA_GONE,
    RequestLog,
    RequestLogWriter,
    RequestRecord,
    in_flight_record,
)
from tessera.store.uptime import UptimeStore

pytestmark = pytest.mark.integration

KEY = "key_0123456789abcdef"
ACCOUNT = "acct_0123456789abcdef"


def started(index: int) -> RequestRecord:
    return in_flight_record(f"req_{index:06d}", KEY, "chat.completions", "tiny", ACCOUNT)


def finished(index: int) -> RequestRecord:
    return replace(started(index), status="ok", provider_id="ab" * 32, prompt_tokens=3)


async def test_final_records_replace_in_flight_rows_and_never_the_reverse(
    store_engine: AsyncEngine,
) -> None:
    log = RequestLog(store_engine)
    await log.write_many([started(1), finished(1), started(2)])  # one batch, both of req 1
    await log.write_many([finished(2), started(3)])  # the next batch finishes req 2
    await log.write_many([started(2), started(3)])  # a retried batch rewrites nothing final
    statuses = {i: (await log.get(f"req_{i:06d}")) for i in (1, 2, 3)}
    assert {i: r.status for i, r in statuses.items() if r} == {1: "ok", 2: "ok", 3: "in_flight"}
    assert statuses[2] is not None and statuses[2].prompt_tokens == 3

    assert await log.mark_interrupted() == 1
    third = await log.get("req_000003")
    assert third is not None
    assert (third.status, third.error_code) == ("interrupted", GATEWAY_RESTARTED)
    assert await log.mark_interrupted() == 0
    # Still running on another replica when this one started: its final record wins.
    await log.write_many([finished(3)])
    third = await log.get("req_000003")
    assert third is not None and (third.status, third.error_code) == ("ok", None)
    await log.write_many([started(3)])  # and nothing final is rewritten after it
    third = await log.get("req_000003")
    assert third is not None and third.status == "ok"


async def test_the_writer_marks_leftovers_first_and_closes_what_ended_unrecorded(
    store_engine: AsyncEngine,
) -> None:
    log = RequestLog(store_engine)
    await log.write_many([started(1)])  # left by a crashed predecessor
    writer = RequestLogWriter(log, flush_interval_s=0.01)
    await writer.start()
    unrecorded = writer.started(started(2))
    writer.started(started(3))
    writer.submit(finished(3))
    writer.started(started(4))
    await writer.flush()
    assert (await log.get("req_000004")).status == "in_flight"  # type: ignore[union-attr]
    unrecorded()  # req 2 ended with no final record
    await writer.close()
    rows = {i: await log.get(f"req_{i:06d}") for i in range(1, 5)}
    assert {i: (r.status, r.error_code) for i, r in rows.items() if r} == {
        1: ("interrupted", GATEWAY_RESTARTED),
        2: ("error", NOT_RECORDED),
        3: ("ok", None),
        4: ("in_flight", None),  # still running when this writer closed: the next start marks it
    }


async def test_open_epochs_round_trip_and_are_replaced_whole(store_engine: AsyncEngine) -> None:
    store = UptimeStore(store_engine)
    assert await store.load_progress(60) == []
    saved = [
        ProviderProgress("a" * 64, True, 9_900, ((0, 10_000, 13_900, 9_900),)),
        ProviderProgress("b" * 64, False, 0, ()),
    ]
    now = datetime.now(UTC)
    await store.save_progress(60, saved, now)
    assert await store.load_progress(60) == saved
    assert await store.load_progress(3600) == []  # another epoch length: not resumed
    await store.save_progress(60, saved[1:], now)
    assert await store.load_progress(60) == saved[1:]


async def test_a_dead_replicas_rows_are_marked_and_the_live_ones_kept(
    store_engine: AsyncEngine,
) -> None:
    log = RequestLog(store_engine)
    await log.write_many([started(1), started(2), started(3)])
    later = datetime.now(UTC)
    await log.write_many([started(4)])  # began after the sweep asked: not judged
    assert await log.mark_interrupted_unless({"req_000002"}, later, chunk=1) == 2
    rows = {i: await log.get(f"req_{i:06d}") for i in range(1, 5)}
    assert {i: (r.status, r.error_code) for i, r in rows.items() if r} == {
        1: ("interrupted", REPLICA_GONE),
        2: ("in_flight", None),  # still running on a live replica
        3: ("interrupted", REPLICA_GONE),
        4: ("in_flight", None),
    }
