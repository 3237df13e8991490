"""A restarted gateway resumes the epoch in progress from saved progress (issue 11, #13).

Downtime observed before the crash is kept; the gateway's own outage, and a grace after
its restart for providers to reconnect, are charged to no one.
"""

from __future__ import annotations

from tessera.market.uptime import ProviderProgress, State, UptimeTracker

EPOCH_MS = 60_000
GRACE_MS = 5_000
SLA = 9_900


def crashed_tracker() -> tuple[UptimeTracker, list[ProviderProgress]]:
    """One provider up 10 s then down 13.9 s, one that left, saved 24 s into the epoch."""
    before = UptimeTracker(EPOCH_MS)
    before.connected("down", SLA, 0)
    before.disconnected("down", 10_000)
    before.connected("left", SLA, 0)
    before.leaving("left", 5_000)
    return before, before.progress(23_900)


def test_progress_keeps_the_downtime_seen_before_a_crash() -> None:
    _, saved = crashed_tracker()
    assert saved == [
        ProviderProgress("down", True, SLA, ((0, 10_000, 13_900, SLA),)),
        ProviderProgress("left", False, SLA, ((0, 5_000, 0, SLA),)),
    ]
    restarted = UptimeTracker(EPOCH_MS)
    restarted.restore(saved, now_ms=30_000, grace_ms=GRACE_MS)
    current = restarted.current("down", 30_000)
    assert current is not None
    assert (current.up_ms, current.down_ms, current.state) == (10_000, 13_900, State.DOWN)


def test_the_gateway_outage_and_the_grace_are_charged_to_no_one() -> None:
    _, saved = crashed_tracker()
    restarted = UptimeTracker(EPOCH_MS)
    restarted.restore(saved, now_ms=30_000, grace_ms=GRACE_MS)
    # Back within the grace: its absence since the crash costs nothing.
    restarted.connected("down", SLA, 33_000)
    [report, left] = restarted.close(EPOCH_MS)
    assert (report.provider_id, report.up_ms, report.down_ms) == ("down", 10_000 + 27_000, 13_900)
    assert report.breach  # 13.9 s down in 50.9 s: the SLA of 99 % is breached
    assert (left.provider_id, left.up_ms, left.down_ms) == ("left", 5_000, 0)


def test_a_provider_that_does_not_come_back_is_down_after_the_grace() -> None:
    _, saved = crashed_tracker()
    restarted = UptimeTracker(EPOCH_MS)
    restarted.restore(saved, now_ms=30_000, grace_ms=GRACE_MS)
    reports = restarted.close(EPOCH_MS)
    down = next(r for r in reports if r.provider_id == "down")
    assert (down.up_ms, down.down_ms) == (10_000, 13_900 + EPOCH_MS - 35_000)
    assert down.up_ms + down.down_ms <= EPOCH_MS


def test_restoring_merges_with_a_provider_that_reconnected_first_and_skips_closed_epochs() -> None:
    _, saved = crashed_tracker()
    restarted = UptimeTracker(EPOCH_MS)
    restarted.connected("down", SLA, 30_000)  # registered before the saved state was read
    restarted.restore(saved, now_ms=30_500, grace_ms=GRACE_MS)
    current = restarted.current("down", 40_000)
    assert current is not None and current.connected
    assert (current.up_ms, current.down_ms) == (10_000 + 10_000, 13_900)

    late = UptimeTracker(EPOCH_MS)
    late.close(2 * EPOCH_MS)  # epochs before the second are closed
    late.restore(saved, now_ms=2 * EPOCH_MS + 1, grace_ms=GRACE_MS)
    assert late.close(3 * EPOCH_MS)[0].epoch_start_ms == 2 * EPOCH_MS
