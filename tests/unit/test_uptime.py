"""The uptime tracker on a fake clock: epochs, downtime, goodbyes, abandonment, races."""

from __future__ import annotations

import pytest

from tessera.market.uptime import EpochReport, State, UptimeTracker, breached

EPOCH = 10_000  # ms
T0 = 1_700_000_000_000 // EPOCH * EPOCH  # an epoch boundary in Unix milliseconds


def at(epoch: int, ms: int = 0) -> int:
    """``ms`` into the ``epoch``-th epoch after T0."""
    return T0 + epoch * EPOCH + ms


def only(reports: list[EpochReport], provider_id: str = "p") -> EpochReport:
    (report,) = [r for r in reports if r.provider_id == provider_id]
    return report


def test_breach_is_integer_arithmetic_on_the_tracked_time() -> None:
    assert not breached(9_900, 100, 9_900)  # exactly 1 % down under a 99 % SLA
    assert breached(9_899, 101, 9_900)
    assert not breached(0, 10_000, 0)  # no SLA: never
    assert breached(9_999, 1, 10_000)  # 100 %: any downtime
    assert not breached(0, 0, 9_900)


def test_a_clean_epoch_is_all_uptime_from_the_connection() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0, 2_000))
    assert tracker.close(at(0, 9_999)) == []  # not ended yet
    report = only(tracker.close(at(1, 5)))
    assert report == EpochReport("p", at(0), EPOCH, 8_000, 0, 9_900, abandoned=False)
    assert not report.breach
    # The next epoch is all uptime.
    assert only(tracker.close(at(2))).up_ms == EPOCH


def test_crash_and_reconnect_within_the_sla_is_no_breach() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.disconnected("p", at(0, 3_000))  # a crash: no goodbye
    tracker.connected("p", 9_900, at(0, 3_100))
    report = only(tracker.close(at(1)))
    assert (report.up_ms, report.down_ms) == (9_900, 100)
    assert not report.breach


def test_crash_beyond_the_sla_is_a_breach() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.disconnected("p", at(0, 3_000))
    tracker.connected("p", 9_900, at(0, 3_101))
    report = only(tracker.close(at(1)))
    assert (report.up_ms, report.down_ms) == (9_899, 101)
    assert report.breach and not report.abandoned


def test_goodbye_then_offline_counts_as_neither() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.leaving("p", at(0, 6_000))
    tracker.disconnected("p", at(0, 6_500))  # draining took 500 ms, then it went away
    report = only(tracker.close(at(1)))
    assert (report.up_ms, report.down_ms) == (6_000, 0)
    assert not report.breach
    # Nothing more is reported and the provider is forgotten.
    assert tracker.close(at(5)) == []
    assert len(tracker) == 0
    assert tracker.current("p", at(5)) is None


def test_reconnecting_after_goodbye_commits_again() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.leaving("p", at(0, 1_000))
    tracker.disconnected("p", at(0, 1_000))
    tracker.connected("p", 9_900, at(0, 4_000))
    tracker.disconnected("p", at(0, 5_000))  # then crashes
    report = only(tracker.close(at(1)))
    assert (report.up_ms, report.down_ms) == (2_000, 5_000)
    assert report.breach


def test_an_epoch_boundary_splits_a_downtime() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_000, at(0))
    tracker.disconnected("p", at(0, 9_400))
    tracker.connected("p", 9_000, at(1, 700))
    first = only(tracker.close(at(1, 800)))
    assert (first.up_ms, first.down_ms, first.breach) == (9_400, 600, False)
    second = only(tracker.close(at(2)))
    assert (second.up_ms, second.down_ms, second.breach) == (9_300, 700, False)


def test_a_late_close_reports_each_ended_epoch_once() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0, 5_000))
    reports = tracker.close(at(3, 1))  # the loop slept through three boundaries
    assert [(r.epoch_start_ms, r.up_ms) for r in reports] == [
        (at(0), 5_000),
        (at(1), EPOCH),
        (at(2), EPOCH),
    ]
    assert tracker.close(at(3, 2)) == []
    # Time never flows back into a closed epoch: an event stamped in one takes effect
    # from the last time already accounted (1 ms into epoch 3, by the close above).
    tracker.disconnected("p", at(2, 9_000))
    report = only(tracker.close(at(4)))
    assert (report.epoch_start_ms, report.up_ms, report.down_ms) == (at(3), 1, EPOCH - 1)


def test_an_abandoned_provider_is_reported_once_then_dropped() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.disconnected("p", at(0, 4_000))  # killed, never comes back
    crash = only(tracker.close(at(1)))
    assert (crash.up_ms, crash.down_ms, crash.breach, crash.abandoned) == (
        4_000,
        6_000,
        True,
        False,
    )
    away = only(tracker.close(at(2)))
    assert (away.up_ms, away.down_ms, away.breach, away.abandoned) == (0, EPOCH, True, True)
    assert tracker.close(at(9)) == []
    assert len(tracker) == 0
    # Coming back makes it committed again, from its new connection.
    tracker.connected("p", 9_900, at(9, 5_000))
    assert only(tracker.close(at(10))).up_ms == 5_000


def test_a_provider_back_before_a_late_close_is_not_abandoned() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.disconnected("p", at(0, 1))
    tracker.connected("p", 9_900, at(2, 500))  # away all of epoch 1, back in epoch 2
    reports = tracker.close(at(3))
    assert [(r.up_ms, r.down_ms, r.abandoned) for r in reports] == [
        (1, EPOCH - 1, False),
        (0, EPOCH, False),
        (EPOCH - 500, 500, False),
    ]
    assert tracker.current("p", at(3, 1)) is not None


def test_sla_zero_never_breaches_but_is_still_tracked() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 0, at(0))
    tracker.disconnected("p", at(0, 1))
    report = only(tracker.close(at(1)))
    assert (report.up_ms, report.down_ms, report.sla_uptime_bps) == (1, EPOCH - 1, 0)
    assert not report.breach
    away = only(tracker.close(at(2)))
    assert away.abandoned and not away.breach


def test_a_second_connection_racing_the_old_one_does_not_double_count() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.connected("p", 9_900, at(0, 3_000))  # a reconnect while the old socket lingers
    tracker.connected("p", 9_900, at(0, 3_000))  # and its event delivered twice
    tracker.disconnected("p", at(0, 3_001))  # the hub drops the replaced session...
    tracker.connected("p", 9_900, at(0, 3_001))  # ...and registers the new one
    tracker.disconnected("p", at(0, 3_001))  # a late duplicate of the drop changes nothing
    tracker.connected("p", 9_900, at(0, 3_001))
    report = only(tracker.close(at(1)))
    assert report.up_ms + report.down_ms == EPOCH
    assert (report.up_ms, report.down_ms) == (EPOCH, 0)


def test_lowering_the_sla_on_reconnect_does_not_excuse_past_downtime() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_900, at(0))
    tracker.disconnected("p", at(0, 1_000))
    tracker.connected("p", 0, at(0, 9_000))
    report = only(tracker.close(at(1)))
    assert report.sla_uptime_bps == 9_900 and report.breach
    assert only(tracker.close(at(2))).sla_uptime_bps == 0  # the new promise, next epoch


def test_time_before_the_first_connection_counts_as_neither() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.disconnected("ghost", at(0))  # never connected: ignored
    tracker.leaving("ghost", at(0))
    tracker.connected("p", 9_900, at(0, 9_990))
    assert [r.provider_id for r in tracker.close(at(1))] == ["p"]
    assert tracker.current("ghost", at(1)) is None


def test_current_shows_the_open_epoch_so_far() -> None:
    tracker = UptimeTracker(EPOCH)
    tracker.connected("p", 9_500, at(0, 1_000))
    tracker.disconnected("p", at(0, 3_000))
    now = tracker.current("p", at(0, 4_000))
    assert now is not None
    assert (now.state, now.connected, now.up_ms, now.down_ms) == (State.DOWN, False, 2_000, 1_000)
    assert (now.epoch_start_ms, now.epoch_ms, now.sla_uptime_bps) == (at(0), EPOCH, 9_500)
    # Asking does not change what the epoch reports.
    assert only(tracker.close(at(1))).down_ms == 7_000


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        UptimeTracker(0)
    with pytest.raises(ValueError):
        UptimeTracker(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UptimeTracker(EPOCH).connected("p", 10_001, at(0))
