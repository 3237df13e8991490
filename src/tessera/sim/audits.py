"""Audits, disputes and penalties in the simulator, by the gateway's own rules.

Every settlement, each provider's requests are audited at the rate the gateway's policy
gives its record (``verify.sampling.audit_rates``, the batch form of ``audit_rate``, with
``verify.penalties.cheat_exposures`` as what a caught cheat loses). An audit's first vote
fails a request the provider cheated on with the scenario's ``detection`` chance, and
any request with its ``false_flag`` chance; those audits are counted in bulk (a clean
audit passes). A failed first vote opens a dispute, followed one by one through the real
``verify.disputes.Case``: the auditors are the ones ``verify.auditors.auditor_order``
picks from a sample of online providers (``CANDIDATES``), each later vote failing the
request with the same chances (an auditor that cheats answers the audit with its own
substitute, failing it, with its ``cheat_probability``), and ``verify.penalties.close``
says what the closed case does: a clean record for a cleared case, and for an upheld one
the failure, the penalty in the gateway's order (clawback, then the slashing table's share
of the member's stake), and a ban when ``bans`` says so. Auditors are paid
``auditor_pay`` per audit from the verification pool.

What the bulk first vote leaves out: the first auditor is taken to be honest (a cheating
auditor's vote is modelled from the second on).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tessera.ledger.slashing_table import DEFAULT_RULES, SlashingTable
from tessera.sim.money import CONSUMERS, Money, exact_shares
from tessera.sim.scenario import Scenario
from tessera.sim.world import Ints, Laws, World
from tessera.verify.auditors import Candidate, auditor_order
from tessera.verify.disputes import Case, upheld_chance
from tessera.verify.penalties import (
    Closed,
    auditor_pay,
    bans,
    cheat_exposures,
    close,
    penalty_for,
)
from tessera.verify.reputation import Reputation
from tessera.verify.sampling import AuditPolicy, audit_rates
from tessera.verify.scoring import WRONG_MODEL, Verdict

CANDIDATES = 24  # online providers drawn to find a case's auditors
PAID_AUDITORS = 8  # a settlement's audits are shared by the first this many in order
PASSED = Verdict(True, None, (), {})
FAILED = Verdict(False, WRONG_MODEL, (), {})


@dataclass(frozen=True, slots=True)
class Rules:
    """The gateway's settings the audits read (its defaults: ``GatewaySettings``)."""

    slashing: SlashingTable
    auditor_min_clean_audits: int
    ban_after_failures: int


@dataclass
class Counts:
    """What the disputes did over a run."""

    audits: int = 0
    disputes: int = 0
    upheld: int = 0
    cleared: int = 0
    inconclusive: int = 0
    dissents: int = 0
    false_slashes: int = 0  # upheld over a request that was not cheated


@dataclass(frozen=True, slots=True)
class Cheating:
    share_cheated: float  # of a cheater's requests
    detection: float  # an auditor's vote fails a cheated request
    false_flag: float  # an auditor's vote fails a request that was not cheated


def audit(
    world: World,
    law: Laws,
    policy: AuditPolicy,
    rules: Rules,
    cheating: Cheating,
    money: Money,
    busy: Ints,
    served: Ints,
    cost: Ints,
    earned: Ints,
    tokens: int,
    now: float,
    settlement: int,
    rng: np.random.Generator,
    counts: Counts,
) -> None:
    """Audit ``served[k]`` requests of each provider ``busy[k]`` (each cost ``cost[k]``,
    earning ``earned[k]``); disputes and penalties follow (module docstring)."""
    loss = cheat_exposures(rules.slashing, world.stake[busy], earned)
    rates = audit_rates(policy, world.clean_audits[busy], world.failed_audits[busy], earned, loss)
    audits = rng.binomial(served, rates)
    cheats = world.cheat[busy]
    c = cheating
    cheated_and_seen = np.where(cheats, c.share_cheated * c.detection, 0.0)
    misjudged = np.where(cheats, 1.0 - c.share_cheated, 1.0) * c.false_flag
    first_fails = cheated_and_seen + misjudged
    disputed = rng.binomial(audits, first_fails)
    world.clean_audits[busy] += audits - disputed
    world.requests[busy] += served
    counts.audits += int(audits.sum())
    _pay_auditors(world, law, rules, money, int(audits.sum()), tokens, now, settlement, rng)
    for k in np.flatnonzero(disputed):
        provider = int(busy[k])
        cheated_share = float(cheated_and_seen[k] / first_fails[k])
        # Where in the batch each disputed request fell (1-based), in order.
        positions = np.sort(rng.integers(1, int(served[k]) + 1, size=int(disputed[k])))
        for position in positions:
            if world.banned[provider]:
                break  # banned at an earlier case: the rest were not served by it
            cheated = bool(rng.random() < cheated_share)
            closed = _dispute(world, rules, c, provider, cheated, now, rng)
            _apply(world, rules, money, closed, provider, cheated, int(cost[k]),
                   int(earned[k]), int(world.requests[provider] - served[k] + position),
                   f"audit:{settlement}:{provider}:{position}", now, counts)  # fmt: skip


def _candidates(
    world: World, exclude: int, now: float, rng: np.random.Generator
) -> list[Candidate]:
    """Online, unbanned providers drawn at random, with their record as the router sees it."""
    drawn = np.unique(rng.integers(0, world.size, size=CANDIDATES))
    drawn = drawn[world.online[drawn] & ~world.banned[drawn] & (drawn != exclude)]
    found = []
    for i in drawn:
        record = Reputation(
            jobs_completed=int(world.requests[i]),
            audits_passed=int(world.clean_audits[i]),
            audits_failed=int(world.failed_audits[i]),
            online_s=float(world.online_s[i]),
            seen_s=max(now, float(world.online_s[i])),
        )
        found.append(
            Candidate(
                str(int(i)), False, record.clean_audits(), record.audits_failed, record.score()
            )
        )
    return found


def _dispute(
    world: World,
    rules: Rules,
    c: Cheating,
    provider: int,
    cheated: bool,
    now: float,
    rng: np.random.Generator,
) -> Closed:
    """One disputed request's case, vote by vote, through the real ``Case``."""
    case = Case(f"sim-{provider}", str(provider), "sim")
    order = auditor_order(
        _candidates(world, provider, now, rng), rules.auditor_min_clean_audits, rng
    )
    for number, auditor in enumerate(order):
        if case.auditors_needed() == 0:
            break
        if number == 0:
            fails = True  # the bulk first vote that opened the dispute
        else:
            honest_fail = c.detection if cheated else c.false_flag
            own_cheat = c.share_cheated if world.cheat[int(auditor)] else 0.0
            fails = bool(rng.random() < own_cheat + (1.0 - own_cheat) * honest_fail)
        case.add(auditor, FAILED if fails else PASSED)
    return close(case)


def _apply(
    world: World,
    rules: Rules,
    money: Money,
    closed: Closed,
    provider: int,
    cheated: bool,
    cost: int,
    earned: int,
    request_number: int,
    reference: str,
    now: float,
    counts: Counts,
) -> None:
    """What the closed case does, as the gateway's verifier does it."""
    counts.disputes += 1
    counts.dissents += len(closed.dissenters)
    if closed.status == "cleared":
        counts.cleared += 1
        world.clean_audits[provider] += 1
        return
    if closed.status != "upheld" or closed.reason is None:
        counts.inconclusive += 1
        return
    counts.upheld += 1
    counts.false_slashes += int(not cheated)
    world.failed_audits[provider] += 1
    if world.caught_after[provider] < 0:
        world.caught_after[provider] = request_number
        world.caught_at[provider] = now
    penalty = penalty_for(closed.reason, CONSUMERS, cost, earned)
    slash = rules.slashing.amount(closed.reason, int(world.stake[provider]))
    world.stake[provider] -= money.penalise(world, provider, penalty, slash, reference, now)
    rule = rules.slashing.rule(closed.reason)
    if bans(rule, int(world.failed_audits[provider]), rules.ban_after_failures):
        world.banned[provider] = True


def _pay_auditors(
    world: World,
    law: Laws,
    rules: Rules,
    money: Money,
    audits: int,
    tokens: int,
    now: float,
    settlement: int,
    rng: np.random.Generator,
) -> None:
    """Pay a settlement's audits to the auditors the real order picks, shared evenly
    among the first PAID_AUDITORS (the order is random within a reputation tier, so
    over many audits the work spreads over them)."""
    if audits == 0:
        return
    order = auditor_order(_candidates(world, -1, now, rng), rules.auditor_min_clean_audits, rng)
    chosen = [int(a) for a in order[:PAID_AUDITORS]]
    if not chosen:
        return
    each = exact_shares(audits, np.ones(len(chosen), dtype=np.int64))
    for auditor, count in zip(chosen, each, strict=True):
        price = int(law.price_in[int(world.gpu[auditor])])
        amount = int(count) * auditor_pay(tokens, price)
        money.pay_auditor(world, auditor, amount, f"audit-pay:{settlement}:{auditor}", now)


def audit_rules(scenario: Scenario) -> Rules:
    """The scenario's audit settings as the gateway holds them: the default slashing
    table with the scenario's share for ``wrong_model``."""
    a = scenario.audits
    table = [
        replace(rule, stake_bps=a.slash_bps) if rule.reason == WRONG_MODEL else rule
        for rule in DEFAULT_RULES
    ]
    return Rules(SlashingTable(table), a.auditor_min_clean_audits, a.ban_after_failures)


def case_detection(detection: float) -> float:
    """The chance an audit of a cheated request ends upheld: the first vote fails it,
    then 2 of 3 agree (``verify.disputes.upheld_chance``)."""
    return upheld_chance(detection, detection)
