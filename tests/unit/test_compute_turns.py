"""ComputeTurns: a provider's forward passes shared fairly between tenants, not jobs."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tessera.market.compute_turns import ComputeTurns


def drive(turns: ComputeTurns[str], jobs: dict[str, str], steps: int, cost: dict[str, float]):
    """Run ``steps`` turns with every job always wanting another; returns who ran, in order.

    ``jobs`` maps a job to its tenant; each turn of a tenant costs ``cost[tenant]`` s.
    """
    order: list[str] = []
    running: list[str] = []
    for job, tenant in jobs.items():
        if turns.arrive(tenant, job):
            running.append(job)
    for _ in range(steps):
        job = running.pop(0)
        order.append(job)
        tenant = jobs[job]
        following = turns.done(tenant, cost[tenant])
        if following is not None:
            running.append(following)
        if turns.arrive(tenant, job):  # the job wants its next step at once
            running.append(job)
    return order


def test_a_tenant_alone_never_waits() -> None:
    turns: ComputeTurns[str] = ComputeTurns()
    for _ in range(100):
        assert turns.arrive("solo", "job")
        assert turns.done("solo", 0.01) is None
    assert turns.waiting == 0


def test_sixteen_jobs_of_one_tenant_share_half_with_one_job_of_another() -> None:
    jobs = {f"flood-{i}": "flood" for i in range(16)} | {"honest": "honest"}
    order = drive(ComputeTurns(), jobs, 400, {"flood": 0.001, "honest": 0.001})
    by_tenant = Counter("honest" if j == "honest" else "flood" for j in order[20:])
    assert abs(by_tenant["honest"] - by_tenant["flood"]) <= 2, by_tenant
    # ...and the flood's own jobs take turns among themselves.
    floods = Counter(j for j in order[20:] if j != "honest")
    assert max(floods.values()) - min(floods.values()) <= 1, floods


def test_equal_share_between_jobs_without_tenants_would_starve_the_lone_job() -> None:
    """What the order replaces: every job its own tenant gives the lone job 1/17."""
    jobs = {f"flood-{i}": f"t{i}" for i in range(16)} | {"honest": "honest"}
    order = drive(
        ComputeTurns(), jobs, 340, {f"t{i}": 0.001 for i in range(16)} | {"honest": 0.001}
    )
    assert order.count("honest") == pytest.approx(20, abs=2)


def test_the_share_follows_measured_compute_not_turns() -> None:
    """A tenant whose passes cost three times as much gets a third as many turns.

    (Each tenant runs two jobs: a tenant with one job is never waiting when its own turn
    ends, so it can get no more than every other turn, whatever the others' passes cost.)
    """
    jobs = {"long-1": "long", "long-2": "long", "short-1": "short", "short-2": "short"}
    order = drive(ComputeTurns(), jobs, 400, {"long": 0.003, "short": 0.001})
    long_turns = sum(j.startswith("long") for j in order[10:])
    short_turns = sum(j.startswith("short") for j in order[10:])
    assert short_turns == pytest.approx(3 * long_turns, rel=0.05)


def test_idleness_is_not_banked() -> None:
    """A tenant back from a long pause starts level with the busy one, not far behind it
    (which would let it take every turn until it caught up)."""
    turns: ComputeTurns[str] = ComputeTurns()
    jobs = {"busy-1": "busy", "busy-2": "busy"}
    drive(turns, jobs, 1000, {"busy": 0.01})  # busy alone for 10 s of compute
    assert turns.used_s("newcomer") == pytest.approx(turns.used_s("busy"), abs=0.011)


def test_width_lets_that_many_turns_run_at_once() -> None:
    turns: ComputeTurns[str] = ComputeTurns(width=2)
    assert turns.arrive("a", "a1")
    assert turns.arrive("b", "b1")
    assert not turns.arrive("a", "a2")
    assert turns.running == 2 and turns.waiting == 1
    assert turns.done("b", 0.001) == "a2"
    assert turns.running == 2 and turns.waiting == 0


def test_a_waiter_gets_the_turn_in_arrival_order_on_a_tie() -> None:
    turns: ComputeTurns[str] = ComputeTurns()
    assert turns.arrive("x", "x1")
    for tenant in ("c", "a", "b"):
        assert not turns.arrive(tenant, f"{tenant}1")
    assert [turns.done("x", 0.0) for _ in range(3)] == ["c1", "a1", "b1"]


def test_many_short_lived_tenants_are_forgotten() -> None:
    turns: ComputeTurns[str] = ComputeTurns()
    rng = random.Random(7)
    for n in range(5000):
        tenant = f"t{n}"
        assert turns.arrive(tenant, "job")
        turns.done(tenant, rng.random() / 1000)
    assert len(turns._tenants) <= 300


def test_every_turn_handed_out_is_returned_once() -> None:
    """Random arrivals and ends: no waiter is lost or granted twice, width is never
    exceeded."""
    rng = random.Random(11)
    turns: ComputeTurns[int] = ComputeTurns(width=3)
    tenant_of: dict[int, str] = {}
    running: list[int] = []
    waiting: set[int] = set()
    granted: list[int] = []
    for job in range(2000):
        tenant_of[job] = rng.choice("abcde")
        if turns.arrive(tenant_of[job], job):
            running.append(job)
            granted.append(job)
        else:
            waiting.add(job)
        while running and rng.random() < 0.6:
            ended = running.pop(rng.randrange(len(running)))
            following = turns.done(tenant_of[ended], rng.random() / 100)
            if following is not None:
                waiting.remove(following)
                granted.append(following)
                running.append(following)
        assert turns.running == len(running) <= 3
    assert len(granted) == len(set(granted))
    assert turns.waiting == len(waiting)
