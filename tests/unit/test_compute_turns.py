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


def test_idleness_is_banked_only_up_to_the_credit() -> None:
    """A tenant back from a long pause starts the credit (a few mean turns) below the busy
    one, not 10 s behind it (which would let it take every turn until it caught up)."""
    turns: ComputeTurns[str] = ComputeTurns(idle_credit_turns=8)
    jobs = {"busy-1": "busy", "busy-2": "busy"}
    drive(turns, jobs, 1000, {"busy": 0.01})  # busy alone for 10 s of compute
    assert turns.mean_turn_s == pytest.approx(0.01)
    assert turns.used_s("newcomer") == pytest.approx(turns.used_s("busy") - 0.08, abs=0.011)
    level: ComputeTurns[str] = ComputeTurns(idle_credit_turns=0)
    drive(level, jobs, 1000, {"busy": 0.01})
    assert level.used_s("newcomer") == pytest.approx(level.used_s("busy"), abs=0.011)


def test_a_busy_tenant_gets_no_credit() -> None:
    """Credit is for a tenant with nothing running: another job of a running tenant starts
    level with the floor, never below it."""
    turns: ComputeTurns[str] = ComputeTurns(idle_credit_turns=8)
    assert turns.arrive("a", "a1")
    assert turns.done("a", 0.01) is None
    assert turns.arrive("a", "a1")  # a runs again...
    assert not turns.arrive("b", "b1")  # ...b waits, with credit below the floor
    assert not turns.arrive("a", "a2")  # a's second job, while a runs: no credit
    assert turns.used_s("b") < turns.used_s("a")
    assert turns.done("a", 0.01) == "b1"


def steps(
    turns: ComputeTurns[str], jobs: dict[str, tuple[str, int]], cost: float, limit: int
) -> list[str]:
    """Run jobs that hold their turn between passes (``again``), as decoding loops do.

    ``jobs`` maps a job to its tenant and how many passes it needs (0: it never ends);
    every pass costs ``cost``. Returns who ran each pass, in order.
    """
    order: list[str] = []
    left = {job: passes for job, (_, passes) in jobs.items()}
    holder: str | None = None
    for job, (tenant, _) in jobs.items():
        if turns.arrive(tenant, job):
            holder = job
    while holder is not None and len(order) < limit:
        order.append(holder)
        tenant = jobs[holder][0]
        left[holder] -= 1
        if left[holder] == 0:  # the job's last pass: it gives the turn back
            holder = turns.done(tenant, cost)
            continue
        granted = turns.again(tenant, cost, holder)
        if granted is not None:
            holder = granted
    return order


def test_a_job_keeps_its_turn_while_nobody_waiting_used_less() -> None:
    turns: ComputeTurns[str] = ComputeTurns()
    assert turns.arrive("solo", "job")
    for _ in range(50):
        assert turns.again("solo", 0.001, "job") is None
    assert turns.running == 1 and turns.waiting == 0


def test_a_tenants_own_jobs_still_take_turns() -> None:
    """A tie goes to the one waiting: jobs of one tenant alternate pass by pass."""
    order = steps(ComputeTurns(), {"a1": ("a", 0), "a2": ("a", 0), "a3": ("a", 0)}, 0.001, 30)
    assert order[:6] == ["a1", "a2", "a3", "a1", "a2", "a3"]


def test_a_short_answer_back_from_idle_runs_back_to_back_beside_a_flood() -> None:
    """Eight flood jobs hold the device; an idle account's five-pass answer then runs its
    passes one after another instead of one flood pass between each two."""
    turns: ComputeTurns[str] = ComputeTurns(idle_credit_turns=8)
    flood = {f"flood-{i}": ("flood", 0) for i in range(8)}
    steps(turns, flood, 0.002, 200)  # the flood alone for a while: the mean turn is known
    assert not turns.arrive("honest", "honest")  # a flood job holds the turn: it waits
    # The flood's job ends its pass and asks again: the honest job has used less.
    granted = turns.again("flood", 0.002, "the flood job that ran")
    assert granted == "honest"
    run = ["honest"]
    for _ in range(4):
        assert turns.again("honest", 0.002, "honest") is None  # keeps it
        run.append("honest")
    assert turns.done("honest", 0.002) is not None  # back to the flood
    assert run == ["honest"] * 5


def test_a_long_job_back_from_idle_shares_equally_after_its_credit() -> None:
    jobs = {f"flood-{i}": ("flood", 0) for i in range(8)} | {"honest": ("honest", 0)}
    turns: ComputeTurns[str] = ComputeTurns(idle_credit_turns=8)
    steps(turns, {f"warm-{i}": ("flood", 20) for i in range(2)}, 0.001, 40)
    order = steps(turns, jobs, 0.001, 400)
    head = order[:8]
    assert head.count("honest") >= 7, head  # its credit: (nearly) back to back at first
    tail = Counter("honest" if j == "honest" else "flood" for j in order[40:])
    assert abs(tail["honest"] - tail["flood"]) <= 2, tail  # then half each


def burst_share(turns: ComputeTurns[str], burst: int, pause: int) -> float:
    """Bursts of ``burst`` passes, each after a pause of ``pause`` passes of a busy flood:
    the bursting tenant's turns per flood turn."""
    count: Counter[str] = Counter()
    holder: str | None = None
    for job in ("flood-1", "flood-2", "flood-3", "flood-4"):
        if turns.arrive("flood", job):
            holder = job
    burst_left, pause_left = 0, pause
    for _ in range(5000):
        if pause_left == 0 and burst_left == 0:
            burst_left = burst
            if turns.arrive("burst", "burst"):
                holder = "burst"
        assert holder is not None
        tenant = "burst" if holder == "burst" else "flood"
        count[tenant] += 1
        if tenant == "burst":
            burst_left -= 1
            if burst_left == 0:
                pause_left = pause
                holder = turns.done("burst", 0.001)
                continue
        elif burst_left == 0:
            pause_left -= 1
        granted = turns.again(tenant, 0.001, holder)
        if granted is not None:
            holder = granted
    return count["burst"] / count["flood"]


def test_bursts_and_pauses_never_win_more_than_a_share() -> None:
    """The credit comes back only as others use compute while the tenant waits, and only
    up to its bound: bursts of ten passes after pauses of two flood passes get no more
    turns than the flood (banking the whole pause would give them three times more)."""
    assert burst_share(ComputeTurns(idle_credit_turns=8), burst=10, pause=2) <= 1.02
    assert burst_share(ComputeTurns(idle_credit_turns=1e9), burst=10, pause=2) > 3


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
