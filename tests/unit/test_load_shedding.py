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


def test_a_queue_longer_than_the_gateway_answers_in_queue_s_is_refused() -> None:
    gauge = LoadGauge(target_s=None, queue_s=1.0, min_queue=4, rate_window_s=2.0)
    assert gauge.refusal(10, waiting=3, now_s=0.0) is None  # under the floor
    shed = gauge.refusal(10, waiting=4, now_s=0.0)
    assert shed is not None and shed.reason == "queue"
    # 40 answers began over the last 2 s: 20 a second, so a 1 s queue holds 20.
    for i in range(40):
        gauge.answered(10.0 + i * 0.05)
    assert gauge.answer_rate(11.99) == pytest.approx(20.0)
    assert gauge.queue_limit(11.99) == 20
    assert gauge.refusal(40, waiting=19, now_s=11.99) is None
    assert gauge.refusal(40, waiting=20, now_s=11.99) == Shed("queue", 1)
    # Answers older than the window no longer count: back to the floor.
    assert gauge.queue_limit(20.0) == 4
    assert "4 requests waiting" in Shed("queue", 1).message(lag_s=0.0, limit=4)


def test_without_queue_s_the_queue_is_never_refused() -> None:
    gauge = LoadGauge(target_s=None, queue_s=None, min_queue=1)
    assert gauge.queue_limit(0.0) is None
    assert gauge.refusal(10**5, waiting=10**5, now_s=0.0) is None
