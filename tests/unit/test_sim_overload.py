"""The simulator refuses overload as the gateway does: the batch forms of the gateway's
rules decide as their single forms, a flash crowd beyond the fleet's capacity is refused
fast (with Retry-After, then retried) instead of queueing, the admitted requests' wait is
bounded by the queue rule's setting, and a refused request moves no money."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from tessera.config import GatewaySettings
from tessera.market.admission import WaitingRoom, room_left
from tessera.market.load_shedding import LoadGauge, starts
from tessera.sim.engine import Run, money_holds, run
from tessera.sim.report import report, to_json
from tessera.sim.scenario import Churn, Gateway, Scenario, ScenarioError, load, parse

CAP = 500  # a loop that admits this many in a row stands for "no bound"
CROWD_S = (120.0, 240.0)  # when the small crowd below is on


def _one_by_one(gauge: LoadGauge, in_flight: int, waiting: int, now_s: float) -> float:
    """Requests arriving one after another: how many start before the first refusal."""
    k = 0
    while k < CAP and gauge.refusal(in_flight + k, waiting + k, now_s) is None:
        k += 1
    return math.inf if k == CAP else float(k)


def test_the_batch_load_gauge_decides_as_refusal_one_by_one() -> None:
    rng = random.Random(11)
    for _ in range(400):
        lagging = rng.random() < 0.1
        gauge = LoadGauge(
            0.05 if lagging or rng.random() < 0.5 else None,
            rng.choice([None, rng.randint(1, 120)]),
            queue_s=rng.choice([None, rng.uniform(0.05, 3.0)]),
            min_queue=rng.randint(1, 60),
            rate_window_s=2.0,
        )
        if lagging:
            for _ in range(5):
                gauge.observe(0.2)
        now_s = 10.0
        for _ in range(rng.randint(0, 300)):  # answers begun in the rate window
            gauge.answered(now_s - rng.uniform(0.0, 0.4))
        in_flight = rng.randint(0, 150)
        waiting = rng.randint(0, in_flight)
        expected = _one_by_one(gauge, in_flight, waiting, now_s)
        batch = starts(gauge, [in_flight], [waiting], [gauge.answer_rate(now_s)])
        assert batch.tolist() == [expected], (in_flight, waiting, gauge.queue_limit(now_s))


def test_the_batch_waiting_room_decides_as_enter_one_by_one() -> None:
    rng = random.Random(12)
    for _ in range(300):
        room = WaitingRoom(rng.choice([None, rng.randint(0, 40)]))
        room.waiting = held = rng.randint(0, 50)
        entered = 0
        while entered < CAP and room.enter():
            entered += 1
        expected = math.inf if entered == CAP else float(entered)
        assert room_left(WaitingRoom(room.max_waiting), [held]).tolist() == [expected]


def test_the_scenarios_gateway_settings_default_to_the_gateways() -> None:
    fields = GatewaySettings.model_fields
    for name in (
        "max_in_flight_requests",
        "max_waiting_requests",
        "overload_queue_s",
        "overload_min_queue",
        "overload_retry_after_s",
        "breaker_failures",
        "breaker_backoff_s",
        "breaker_backoff_max_s",
        "sticky_ttl_s",
        "default_max_tokens",
    ):
        assert getattr(Gateway(), name) == fields[name].default, name
    # The shipped scenarios say them too, and a file without a [gateway] table still loads.
    assert dataclasses.replace(load("flash-crowd").gateway, replicas=1) == Gateway()
    raw = _baseline_raw()
    del raw["gateway"]
    assert parse(raw).gateway == Gateway()
    raw["gateway"] = {"replicas": 0}
    with pytest.raises(ScenarioError, match=r"gateway\.replicas"):
        parse(raw)


def _baseline_raw() -> dict[str, object]:
    import tomllib
    from importlib import resources

    text = resources.files("tessera.sim").joinpath("scenarios/baseline.toml").read_text()
    return tomllib.loads(text)


def _crowd(multiplier: float, **gateway: float) -> Scenario:
    """A two-minute crowd two minutes in, on a fleet that never churns."""
    base = load("flash-crowd")
    crowd = dataclasses.replace(
        base.events[0], start_s=CROWD_S[0], duration_s=CROWD_S[1] - CROWD_S[0],
        multiplier=multiplier,
    )  # fmt: skip
    return dataclasses.replace(
        base,
        churn=Churn(10**9, 1.0, 1.0, 2.5),  # nobody leaves: no failover adds to a wait
        events=(crowd,),
        demand=dataclasses.replace(base.demand, sampled_requests_per_s=20.0),
        gateway=dataclasses.replace(base.gateway, **gateway),
    )


def _in_crowd(result: Run) -> np.ndarray:
    at = result.samples["at"]
    return (at >= CROWD_S[0]) & (at < CROWD_S[1])


def test_a_crowd_beyond_capacity_is_refused_and_the_admitted_wait_is_bounded() -> None:
    """Ten times the demand (about three times the fleet's capacity): the gateway refuses
    the excess and the admitted requests never wait longer than the queue rule allows.

    With its floor ``overload_min_queue`` at 1, the queue rule lets a replica hold what
    it answers in ``overload_queue_s``, so a request admitted waits at most that long for
    a slot, after at most ``retries_after_refusal`` waits of Retry-After; the rest of its
    time to first token is the network and prefill."""
    scenario = _crowd(10.0, overload_min_queue=1)
    result = run(scenario, seed=3, providers=3_000, hours=360 / 3600)
    sm = result.samples
    ok, refused, crowd = sm["ok"], sm["refused"], _in_crowd(result)
    assert refused[crowd].mean() > 0.3 and not refused[~crowd & (sm["at"] < CROWD_S[0])].any()
    assert not (ok & refused).any()
    assert result.totals.refusals > 0 and result.totals.refused > 0
    g = scenario.gateway
    waits_s = g.overload_queue_s + scenario.demand.retries_after_refusal * g.overload_retry_after_s
    answered = ok & crowd
    ttft = sm["network_ms"] + sm["queue_ms"] + sm["prefill_ms"]
    rest_p99 = float(np.percentile((sm["network_ms"] + sm["prefill_ms"])[answered], 99))
    assert float(np.percentile(ttft[answered], 99)) <= 1000.0 * waits_s + rest_p99
    # The wait for a slot alone (an answer on the first provider, less the Retry-After
    # waits): within the queue rule's bound.
    first = answered & (sm["attempts"] == 1)
    slot_wait_ms = sm["queue_ms"] - (sm["tries"] - 1) * g.overload_retry_after_s * 1000.0
    assert float(slot_wait_ms[first].max()) <= 1000.0 * g.overload_queue_s
    assert float(slot_wait_ms[first].max()) > 0.5 * 1000.0 * g.overload_queue_s  # it binds
    # Retried requests were answered too, and refused ones were sent 1 + retries times.
    assert (ok & (sm["tries"] > 1)).any()
    assert (sm["tries"][refused] == 1 + scenario.demand.retries_after_refusal).all()
    body = report([result])["per_seed"][0]
    crowd_minutes = [m for m in body["by_minute"] if CROWD_S[0] <= m["minute"] * 60 < CROWD_S[1]]
    assert all(m["refused"] > 0.3 for m in crowd_minutes)
    shares = body["requests"]
    parts = ("success_first_try", "continued_after_failover", "refused", "failed")
    assert sum(shares[p] for p in parts) == pytest.approx(1.0, abs=1e-5)


def test_without_a_crowd_nothing_is_refused() -> None:
    result = run(_crowd(1.0), seed=3, providers=3_000, hours=360 / 3600)
    assert result.totals.refusals == 0 and result.totals.refused == 0
    assert not result.samples["refused"].any() and (result.samples["tries"] == 1).all()


def test_only_admitted_requests_move_money_and_seeds_repeat() -> None:
    """Consumers pay for the requests providers served: the Poisson draws the ledger
    settles match the fluid's served requests, which are at most the admitted ones, far
    fewer than the tries in a crowd; the book balances to the base unit."""
    scenario = _crowd(10.0)
    first = run(scenario, seed=4, providers=2_000, hours=300 / 3600)
    t = first.totals
    assert money_holds(t) and t.paid > 0 and t.refusals > 0
    admitted = t.tries - t.refusals
    assert t.served <= admitted + 1e-6 * admitted
    assert abs(t.requests - t.served) <= 5.0 * math.sqrt(t.served)
    assert t.requests < 0.6 * t.tries  # the refused majority of the crowd paid nothing
    again = run(scenario, seed=4, providers=2_000, hours=300 / 3600)
    assert to_json(report([first])) == to_json(report([again]))
