"""The gateway's overload policy: a smoothed event-loop lag and an in-flight bound."""

from __future__ import annotations

import pytest

from tessera.market.load_shedding import LoadGauge, Shed


def test_a_gauge_without_lag_or_running_requests_admits() -> None:
    gauge = LoadGauge(target_s=0.05, max_in_flight=10)
    assert gauge.refusal(0) is None
    assert gauge.refusal(9) is None


def test_the_in_flight_bound_refuses_the_request_beyond_it() -> None:
    gauge = LoadGauge(target_s=None, max_in_flight=2, retry_after_s=3)
    assert gauge.refusal(1) is None
    assert gauge.refusal(2) == Shed("in_flight", 3)
    assert "running 2 requests" in Shed("in_flight", 3).message(lag_s=0.0, limit=2)


def test_one_late_turn_does_not_refuse_but_a_standing_lag_does() -> None:
    gauge = LoadGauge(target_s=0.05, window=3)
    gauge.observe(0.4)  # one slow turn (a burst, a garbage collection)
    gauge.observe(0.001)
    gauge.observe(0.3)
    assert gauge.lag_s == pytest.approx(0.001)
    assert gauge.refusal(0) is None
    for lag in (0.08, 0.09, 0.07):
        gauge.observe(lag)
    assert gauge.overloaded
    shed = gauge.refusal(0)
    assert shed is not None and shed.reason == "loop_lag"
    assert "runs 70 ms behind" in shed.message(lag_s=gauge.lag_s, limit=None)


def test_one_turn_on_time_ends_the_refusals() -> None:
    gauge = LoadGauge(target_s=0.05, window=5)
    for _ in range(10):
        gauge.observe(0.5)
    assert gauge.overloaded
    gauge.observe(0.01)
    assert not gauge.overloaded
    assert gauge.refusal(0) is None


def test_negative_samples_count_as_no_lag_and_no_target_never_sheds() -> None:
    gauge = LoadGauge(target_s=None)
    for _ in range(10):
        gauge.observe(10.0)
    assert gauge.refusal(10**6) is None
    other = LoadGauge(target_s=0.01, window=1)
    other.observe(-0.5)
    assert other.lag_s == 0.0


def test_the_window_holds_at_least_one_sample() -> None:
    with pytest.raises(ValueError):
        LoadGauge(target_s=0.01, window=0)
