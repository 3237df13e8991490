"""The simulator follows the gateway's rules: 2-of-3 disputes, the penalty's order,
bans, auditor pay, circuit breakers, sticky conversations and the settings' defaults."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tessera.config import GatewaySettings
from tessera.ledger.slashing_table import SlashingTable
from tessera.sim.audits import audit_rules
from tessera.sim.engine import Run, money_holds, run
from tessera.sim.scenario import Audits, Churn, Faults, Gateway, Scenario, load
from tessera.verify.disputes import upheld_chance


def test_the_audit_settings_default_to_the_gateways() -> None:
    gateway = GatewaySettings()
    audits = Audits()
    assert audits.auditor_min_clean_audits == gateway.auditor_min_clean_audits
    assert audits.ban_after_failures == gateway.ban_after_failures
    rules = audit_rules(load("baseline"))
    assert rules.slashing.public() == SlashingTable().public()  # the default table


def test_honest_providers_misjudged_are_cleared_by_two_of_three() -> None:
    """No cheaters, each auditor failing an honest request with chance f: disputes are f
    of the audits, and a dispute is upheld with chance 1 - (1 - f)^2 (not f): the false
    slashes the 2-of-3 rule leaves. Both inside a binomial 99.9 % band."""
    base = load("cheaters")
    f = 0.05
    scenario = dataclasses.replace(
        base,
        cheaters=(),
        audits=dataclasses.replace(base.audits, false_flag=f),
        churn=Churn(10**9, 1.0, 1.0, 2.5),
        demand=dataclasses.replace(base.demand, sampled_requests_per_s=1.0),
    )
    result = run(scenario, seed=3, providers=3_000, hours=0.1)
    cases = result.totals.cases
    assert cases.audits > 2_000
    band = 3.3 * math.sqrt(f * (1 - f) / cases.audits)
    assert abs(cases.disputes / cases.audits - f) <= band
    decided = cases.upheld + cases.cleared
    assert cases.inconclusive == cases.disputes - decided
    assert decided > 0.95 * cases.disputes  # auditors were found for nearly every case
    p = upheld_chance(1.0, f)
    assert abs(cases.upheld / decided - p) <= 3.3 * math.sqrt(p * (1 - p) / decided) + 0.005
    assert cases.false_slashes == cases.upheld  # nobody cheated: every slash was false
    # Every cleared case leaves its first auditor dissenting; an upheld one may too.
    assert cases.dissents >= cases.cleared
    assert money_holds(result.totals)


def test_penalties_claw_back_first_pay_auditors_and_conserve_money() -> None:
    base = load("cheaters")
    scenario = dataclasses.replace(
        base,
        cheaters=tuple(dataclasses.replace(c, share=c.share * 2) for c in base.cheaters),
        demand=dataclasses.replace(base.demand, sampled_requests_per_s=1.0),
    )
    result = run(scenario, seed=2, providers=3_000, hours=0.1)
    t = result.totals
    w = result.world
    assert t.cases.upheld > 0 and t.slashed > 0
    assert t.clawed_back > 0  # the consumer's refund came out of earnings first
    assert t.auditors_paid > 0  # paid from the verification pool
    # Every upheld case and every refused forged receipt bans (the table's rules say so):
    # caught cheaters serve no more.
    assert (w.banned == (w.caught_after >= 0)).all()
    assert t.cases.receipts_refused > 0 and t.cases.upheld > 0
    assert money_holds(t) and t.ledger_problems == []


def _openings(policy: Gateway, horizon_s: float, step_s: float) -> int:
    """How often a broken provider's breaker opens in ``horizon_s`` when it is sent work
    every step: ``failures`` at the start, then one trial as each backoff ends (on the
    first step after it), each doubling the backoff up to its cap."""
    opened, backoff, t = 1, policy.breaker_backoff_s, 0.0
    while True:
        t = math.ceil((t + backoff) / step_s) * step_s  # the trial's step
        if t >= horizon_s:
            return opened
        opened += 1
        backoff = min(backoff * 2, policy.breaker_backoff_max_s)


def test_the_gateways_breakers_keep_broken_providers_out() -> None:
    """Providers that stay connected but fail every job: the real breaker opens after
    ``breaker_failures`` in a row and lets one trial through per backoff, so each fails
    failures + (openings - 1) jobs, the openings following the doubling backoff. They
    serve and earn nothing, and the requests they failed are answered elsewhere."""
    base = load("baseline")
    scenario = dataclasses.replace(
        base,
        cheaters=(),
        churn=Churn(10**9, 1.0, 1.0, 2.5),  # always connected: sent work every step
        faults=Faults(broken_share=0.03),
        demand=dataclasses.replace(base.demand, sampled_requests_per_s=20.0),
    )
    horizon = 600.0
    result = run(scenario, seed=4, providers=3_000, hours=horizon / 3600)
    b = result.totals.breakers
    w = result.world
    assert b.broken == int(w.broken.sum()) > 50
    opened = _openings(scenario.gateway, horizon, scenario.step_s)
    assert abs(b.openings / b.broken - opened) < 0.2
    failures = scenario.gateway.breaker_failures + opened - 1
    assert abs(b.failed_jobs / b.broken - failures) < 0.3
    assert not w.earned[w.broken].any() and not w.requests[w.broken].any()
    s = result.samples
    assert not w.broken[s["provider"][s["ok"]]].any()  # answered elsewhere
    assert float(s["ok"].mean()) > 0.999
    assert money_holds(result.totals)


def _chat(ttl_s: float) -> tuple[Scenario, Run]:
    base = load("chat")
    scenario = dataclasses.replace(
        base,
        gpus=(dataclasses.replace(base.gpus[0], share=1.0),),  # one group: always kept
        cheaters=(),
        churn=Churn(600.0, 1.0, 600.0, 2.5),  # exponential sessions: memoryless
        gateway=dataclasses.replace(base.gateway, sticky_ttl_s=ttl_s),
        demand=dataclasses.replace(base.demand, requests_per_s=100_000.0,
                                   sampled_requests_per_s=20.0),
    )  # fmt: skip
    return scenario, run(scenario, seed=9, providers=2_000, hours=0.25)


def test_a_chats_next_turn_goes_back_to_its_provider_while_its_session_lasts() -> None:
    """Sessions exponential with mean m, the next turn sent Exp(theta) after the answer:
    it finds its provider in the same session (and its cache) with chance m / (m + theta),
    times the chance the session also outlasts the answer, inside the binomial 99.9 %
    band; there it prefills only the new message."""
    scenario, result = _chat(ttl_s=600.0)
    s = result.samples
    later = s["ok"] & (s["turn"] > 0)
    warm = later & s["warm"]
    m, theta = scenario.churn.session_mean_s, scenario.demand.think_time_s
    # The session must also outlast the answer itself (D: round trip, prefill, decode).
    answer_s = (s["network_ms"] + s["service_ms"])[later] / 1000.0
    expected = m / (m + theta) * float(np.mean(np.exp(-answer_s / m)))
    n = int(later.sum())
    assert n > 3_000
    band = 3.3 * math.sqrt(expected * (1 - expected) / n)
    assert abs(float(warm.sum()) / n - expected) <= band + 0.002
    assert np.median(s["prefill_ms"][warm]) < 0.5 * np.median(s["prefill_ms"][later & ~warm])
    # Without the sticky table (a TTL of 0) no turn finds its cache.
    _, cold = _chat(ttl_s=0.0)
    assert not cold.samples["warm"].any() and (cold.samples["turn"] > 0).any()
