"""The simulator against closed forms: churn's long-run availability, the audit catch law
1 - (1 - q)^n, retry success 1 - (1 - a)^k, money conserved to the base unit, and the same
seed giving the same report byte for byte."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tessera.cli import app
from tessera.sim.engine import fill, money_holds, run
from tessera.sim.money import exact_shares
from tessera.sim.report import report, to_json
from tessera.sim.scenario import NAMES, Churn, Event, ScenarioError, load, parse
from tessera.sim.world import build, churn_step


def test_every_shipped_scenario_loads() -> None:
    for name in NAMES:
        scenario = load(name)
        assert scenario.name == name and scenario.providers == 1_000_000


def test_long_run_availability_is_the_renewal_share() -> None:
    """A provider alternating sessions and downtimes is online E[S] / (E[S] + E[D]) of
    the time, whatever the laws' shapes (renewal theory)."""
    churn = Churn(
        session_mean_s=600.0, session_shape=0.7, downtime_mean_s=200.0, downtime_shape=2.5
    )
    scenario = dataclasses.replace(load("baseline"), churn=churn)
    rng = np.random.default_rng(3)
    world = build(scenario, 20_000, rng)
    shares = []
    for step in range(0, 6 * 3600, 10):
        churn_step(world, churn, float(step), rng)
        if step >= 3600:
            shares.append(world.online.mean())
    assert abs(float(np.mean(shares)) - 600 / 800) < 0.01


@pytest.mark.parametrize("shape", [1.0, 0.6])
def test_the_fleet_starts_in_its_long_run_state(shape: float) -> None:
    """At the start, what is left of the sessions in progress has the equilibrium mean
    E[S^2] / (2 E[S]) (a random moment falls in a long session more often): for Weibull
    sessions of shape k and scale l, l Gamma(1 + 2/k) / (2 Gamma(1 + 1/k)); the mean
    itself for exponential ones. Downtimes (Lomax, shape a): mean * (a - 1) / (a - 2)."""
    base = load("baseline")
    churn = Churn(900.0, shape, 600.0, 3.5)
    world = build(dataclasses.replace(base, churn=churn), 200_000, np.random.default_rng(7))
    scale = churn.session_mean_s / math.gamma(1 + 1 / shape)
    residual = world.flip_at[world.online]
    expected = scale * math.gamma(1 + 2 / shape) / (2 * math.gamma(1 + 1 / shape))
    assert abs(residual.mean() - expected) < 3.3 * residual.std() / math.sqrt(residual.size)
    a = churn.downtime_shape
    down = world.flip_at[~world.online]
    expected_down = churn.downtime_mean_s * (a - 1) / (a - 2)
    assert abs(down.mean() - expected_down) < 3.3 * down.std() / math.sqrt(down.size)


def test_cheaters_are_caught_as_the_formula_says() -> None:
    """Established cheaters of each kind, cheating with chance c. Audited kinds, at the
    floor rate p, each auditor failing a cheated request with chance d and a case upheld
    by 2 of 3: P(caught within n) = 1 - (1 - p c d (1 - (1 - d)^2))^n. Forged receipts,
    each checked: 1 - (1 - c)^n. Inside the binomial 99.9 % band at several n."""
    base = load("cheaters")
    kinds = tuple(dataclasses.replace(c, share=c.share * 1.5) for c in base.cheaters)
    assert {c.kind for c in kinds} == {"wrong_model", "tampered_output", "forged_receipt"}
    scenario = dataclasses.replace(
        base,
        cheaters=kinds,
        audits=dataclasses.replace(base.audits, false_flag=0.0),
        churn=Churn(10**9, 1.0, 1.0, 2.5),  # nobody leaves: every cheater keeps serving
        demand=dataclasses.replace(base.demand, sampled_requests_per_s=1.0),
    )
    result = run(scenario, seed=5, providers=6_000, hours=0.15)
    w = result.world
    for index, kind in enumerate(kinds):
        mine = w.cheat_kind == index
        total = int(mine.sum())
        served = w.requests[mine]
        c, d = kind.cheat_probability, kind.detection
        q = scenario.audits.floor_rate * c * d * (1 - (1 - d) ** 2) if kind.audited else c
        after = w.caught_after[mine]
        for n in (5, 20, 50, 100):
            # Among the cheaters exposed to n requests (served n, or caught by then): the
            # router sends an expensive card little work, so not every cheater reaches n.
            within = (after >= 0) & (after <= n)
            exposed = int((within | (served >= n)).sum())
            assert exposed > 0.8 * total
            expected = 1 - (1 - q) ** n
            seen = float(within.sum()) / exposed
            band = 3.3 * math.sqrt(expected * (1 - expected) / exposed)
            assert abs(seen - expected) <= band + 0.005, (kind.kind, n, seen, expected)
    assert result.totals.cases.false_slashes == 0 and money_holds(result.totals)
    # Each forger is caught by its first refused receipt, and banned: refused once.
    forgers_caught = int(((w.cheat_kind == 2) & (w.caught_after >= 0)).sum())
    assert result.totals.cases.receipts_refused == forgers_caught > 0


def test_retries_succeed_as_one_minus_failure_to_the_attempts() -> None:
    """Each attempt lands on a dead gateway replica with chance 1 - a and is retried, up
    to k attempts: a request succeeds with chance 1 - (1 - a)^k."""
    base = load("baseline")
    lost = 0.4
    scenario = dataclasses.replace(
        base,
        churn=Churn(10**9, 1.0, 1.0, 2.5),
        events=(Event(kind="replica-loss", start_s=0.0, duration_s=10**9, share=lost),),
        # Light demand: no provider is ever full, so only the dead replica fails attempts.
        demand=dataclasses.replace(
            base.demand, requests_per_s=100_000.0, sampled_requests_per_s=150.0, attempts=3
        ),
    )
    result = run(scenario, seed=9, providers=2_000, hours=0.05)
    ok = result.samples["ok"]
    attempts = result.samples["attempts"]
    n = len(ok)
    band = 3.3 * math.sqrt(0.25 / n)
    assert abs(ok.mean() - (1 - lost**3)) < band
    assert abs((attempts == 1).mean() - (1 - lost)) < band
    assert abs(((attempts == 2) & ok).mean() - lost * (1 - lost)) < band


def test_money_is_conserved_to_the_base_unit_and_seeds_repeat() -> None:
    scenario = load("cheaters")
    first = run(scenario, seed=2, providers=3_000, hours=0.05)
    again = run(scenario, seed=2, providers=3_000, hours=0.05)
    t = first.totals
    assert t.paid > 0 and money_holds(t)
    # What consumers paid, less the refunds clawed back from cheats, is everyone's.
    assert t.paid - t.clawed_back == t.earned + t.fees + t.verification_pool
    assert int(first.world.earned.sum()) == t.earned
    assert to_json(report([first])) == to_json(report([again]))
    other = run(scenario, seed=3, providers=3_000, hours=0.05)
    assert to_json(report([other])) != to_json(report([first]))


def test_a_flash_crowd_builds_a_queue_that_drains() -> None:
    """Four times the demand for the second minute: requests queue, then drain."""
    base = load("flash-crowd")
    scenario = dataclasses.replace(
        base,
        events=(
            dataclasses.replace(base.events[0], start_s=60.0, duration_s=60.0, multiplier=4.0),
        ),
        demand=dataclasses.replace(base.demand, sampled_requests_per_s=40.0),
    )
    result = run(scenario, seed=1, providers=2_000, hours=300 / 3600)
    minutes = report([result])["per_seed"][0]["by_minute"]
    assert [m["minute"] for m in minutes] == [0, 1, 2, 3, 4]
    before, during, after = minutes[0], minutes[1], minutes[4]
    assert during["requests"] > 3 * before["requests"]  # the crowd, sampled
    assert during["ttft_ms_p50"] > 2 * before["ttft_ms_p50"]  # it queues
    # The backlog drains once the crowd is gone (the queue empties at a third of load).
    assert after["ttft_ms_p50"] < minutes[2]["ttft_ms_p50"]
    income = report([result])["per_seed"][0]["providers_income"]
    assert 0.0 <= income["gini_of_earnings"] <= 1.0
    assert 0.0 <= income["share_below_electricity"] <= 1.0


def test_the_command_writes_the_same_report_twice(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "sim",
        "eu-only",
        "--providers",
        "2000",
        "--hours",
        "0.02",
        "--seeds",
        "2",
        "--jobs",
        "1",
    ]
    for out in ("a", "b"):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    for name in ("eu-only.json", "eu-only.md", "eu-only-caught.svg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "| region | TTFT p50" in (tmp_path / "a" / "eu-only.md").read_text()
    bad = runner.invoke(app, ["sim", "moon-base"])
    assert bad.exit_code == 2 and "no scenario 'moon-base'" in bad.output


@pytest.mark.parametrize(
    ("change", "message"),
    [({"providers": 0}, "must be positive"),
     ({"sla_uptime": 1.5}, "sla_uptime must lie in [0, 1]"),
     ({"demand": {"policy": {"regions_allow": ["atlantis"]}}}, "demand.policy"),
     ({"events": [{"kind": "meteor", "start_s": 0, "duration_s": 1}]}, "not a known event"),
     ({"gpus": []}, "gpus must add up to 1"),
     ({"cheaters": [{"kind": "bribery", "share": 0.1}]}, "'bribery' is not one of"),
     ({"cheaters": [{"share": 0.7}, {"kind": "forged_receipt", "share": 0.4}]}, "at most 1"),
     ({"cheaters": {"share": 0.1, "false_flag": 0.01}}, "moved to audits.false_flag"),
     ({"cheaters": {"share": 0.1, "detection": 0.0}}, "must be above 0")],
)  # fmt: skip
def test_a_bad_scenario_is_refused_with_its_field(change: dict[str, object], message: str) -> None:
    import tomllib
    from importlib import resources

    raw = tomllib.loads(
        resources.files("tessera.sim").joinpath("scenarios/baseline.toml").read_text()
    )
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(raw)


def test_the_consumers_policy_is_applied_by_the_real_router() -> None:
    """eu-only consumers send ``regions_allow = ["eu"]``: the gateway's own policy code
    keeps every request on EU providers (here DE), and the cheap cards win the most."""
    scenario = load("eu-only")
    result = run(scenario, seed=4, providers=3_000, hours=0.03)
    ok = result.samples["ok"].astype(bool)
    served_by = result.samples["provider"][ok]
    regions = {scenario.regions[r].name for r in result.world.region[served_by]}
    assert regions == {"DE-eu"}
    base = run(load("baseline"), seed=4, providers=3_000, hours=0.03)
    everywhere = base.samples["provider"][base.samples["ok"].astype(bool)]
    assert len({int(r) for r in base.world.region[everywhere]}) == len(scenario.regions)


def test_members_shares_of_a_groups_earnings_sum_exactly() -> None:
    weights = np.array([3, 1, 1, 7, 2], dtype=np.int64)
    for total in (0, 1, 13, 10**6 + 7, 2**61 + 12345):  # the last takes the big-int path
        parts = exact_shares(total, weights)
        assert int(parts.sum()) == total and (parts >= 0).all()
        ideal = [total * int(w) / int(weights.sum()) for w in weights]
        assert all(abs(int(p) - i) <= 1 for p, i in zip(parts, ideal, strict=True))


def test_the_ledger_check_runs_on_every_run_and_finds_tampering() -> None:
    scenario = load("cheaters")
    result = run(scenario, seed=6, providers=1_500, hours=0.02)
    assert result.totals.ledger_problems == [] and result.totals.slashed > 0
    assert result.totals.slashed == result.totals.refunded + result.totals.insurance_pool
    result.totals.ledger_problems.append("a member's earnings differ")
    assert not money_holds(result.totals)


def test_littles_law_holds_between_the_fluid_and_the_sampled_requests() -> None:
    """The background's requests in service (from its batching fixed point) equal the
    routed rate times the mean service time the sampled requests saw, L = lambda W,
    within the sampled mean's confidence interval: two computations of one queue agree."""
    base = load("baseline")
    card = dataclasses.replace(base.gpus[0], share=1.0)
    scenario = dataclasses.replace(
        base,
        gpus=(card,),
        churn=Churn(10**9, 1.0, 1.0, 2.5),
        cheaters=(),
        demand=dataclasses.replace(base.demand, requests_per_s=300_000.0,
                                   sampled_requests_per_s=2_000.0),
    )  # fmt: skip
    result = run(scenario, seed=8, providers=2_000, hours=120 / 3600)
    w = result.world
    in_service = float(w.streams.sum())
    rate = float(w.rate.sum())
    # The requests of the last step, which saw the state the fluid ended in.
    last = result.samples["ok"].astype(bool) & (result.samples["at"] >= 115.0)
    service = result.samples["service_ms"][last] / 1000.0
    mean_service_s = float(service.mean())
    # Within the sample mean's 99.9 % interval (lengths are lognormal: a wide spread).
    band = 3.3 * float(service.std()) / math.sqrt(service.size) / mean_service_s
    assert (w.queue == 0).all() and in_service > 0 and service.size > 5_000
    assert abs(in_service - rate * mean_service_s) / in_service < band


def test_a_full_group_takes_no_more_and_the_overflow_goes_where_the_router_prefers() -> None:
    share = np.array([0.5, 0.5, 0.0])
    full = np.array([10.0, 100.0, 50.0])
    allowed = np.array([True, True, True])
    assert fill(share, full, allowed, 60.0).tolist() == [10.0, 50.0, 0.0]
    assert fill(share, full, allowed, 20.0).tolist() == [10.0, 10.0, 0.0]
    # Past every open group's room the rest queues, spread by size over the allowed.
    over = fill(share, full, allowed, 320.0)
    left = 320.0 - 110.0
    assert over.sum() == pytest.approx(320.0) and (over >= full - 1e-9).all()
    assert over.tolist() == pytest.approx([10 + left * 10 / 160, 100 + left * 100 / 160,
                                           left * 50 / 160])  # fmt: skip
    nobody = fill(np.zeros(3), full, np.zeros(3, dtype=bool), 10.0)
    assert nobody.tolist() == [0.0, 0.0, 0.0]
