"""Receipts, audits, disputes and penalties in the simulator, by the gateway's own rules.

Cheaters come in the kinds the network checks (``scenario.CHEAT_KINDS``). A forged
receipt is refused by the gateway's check of every receipt: the request is not charged,
and the provider is penalised as the verifier does it (``verify.penalties``: no consumer
to refund, the slashing table's share, a ban by the rule). The other kinds are caught by
audits:

Every settlement, each provider's requests are audited at the rate the gateway's policy
gives its record (``verify.sampling.audit_rates``, the batch form of ``audit_rate``, with
``verify.penalties.cheat_exposures`` as what a caught cheat loses). An audit's first vote
fails a request the provider cheated on with its kind's ``detection`` chance, and any
other request with the audits' ``false_flag`` chance; those audits are counted in bulk
(a clean audit passes). A failed first vote opens a dispute, followed one by one through
the real ``verify.disputes.Case``: the auditors are the ones ``verify.auditors.
auditor_order`` picks from a sample of online providers (``CANDIDATES``), each later vote
failing the request with the same chances (an auditor that substitutes models answers the
audit with its own substitute, failing it, as often as it cheats), and
``verify.penalties.close`` says what the closed case does: a clean record for a cleared
case, and for an upheld one the failure, the penalty in the gateway's order (clawback,
then the slashing table's share of the member's stake), and a ban when ``bans`` says so.
Auditors are paid ``auditor_pay`` per audit from the verification pool.

What the bulk first vote leaves out: the first auditor is taken to be honest (a cheating
auditor's vote is modelled from the second on). Penalties land at the settlement's end,
as in the rest of the simulator (engine.SETTLE_S).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tessera.ledger.slashing_table import DEFAULT_RULES, SlashingTable
from tessera.sim.money import CONSUMERS, Money, exact_shares
from tessera.sim.scenario import Scenario, resolved
from tessera.sim.world import Bools, Floats, Ints, Laws, World
from tessera.verify.auditors import Candidate, auditor_order
from tessera.verify.disputes import Case
from tessera.verify.penalties import (
    Closed,
    Penalty,
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
    receipts_refused: int = 0  # forged receipts the gateway's check refused


@dataclass(frozen=True)
class Cheating:
    """The scenario's kinds of cheating as arrays indexed by ``world.cheat_kind + 1``
    (0: an honest provider)."""

    probability: Floats  # the share of its requests a provider cheats on
    detection: Floats  # an auditor's vote fails a cheated request (audited kinds)
    audited: Bools  # caught by audits (else by the receipt check)
    reasons: tuple[str, ...]  # the slashing table's reason ("" for honest)
    false_flag: float  # an auditor's vote fails a request that was not cheated


def cheating_of(scenario: Scenario) -> Cheating:
    kinds = scenario.cheaters
    return Cheating(
        probability=np.array([0.0, *(c.cheat_probability for c in kinds)]),
        detection=np.array([0.0, *(c.seen for c in kinds)]),
        audited=np.array([False, *(c.audited for c in kinds)]),
        reasons=("", *(c.kind for c in kinds)),
        false_flag=resolved(scenario.audits.false_flag, "audits.false_flag"),
    )


def receipts(
    world: World, cheating: Cheating, busy: Ints, served: Ints, rng: np.random.Generator
) -> Ints:
    """The gateway checks every receipt: for each provider ``busy[k]`` that forges them,
    the request (1-based, among ``served[k]``) whose forged receipt is refused, or 0 when
    none was sent. A refused request is not charged (the gateway releases its hold)."""
    kind = world.cheat_kind[busy].astype(np.int64) + 1
    forges = ~cheating.audited[kind] & (kind > 0) & (served > 0)
    caught = np.zeros(busy.size, dtype=np.int64)
    if forges.any():
        first = rng.geometric(np.maximum(cheating.probability[kind[forges]], 1e-12))
        caught[forges] = np.where(first <= served[forges], first, 0)
    return caught


def penalise_receipts(
    world: World,
    rules: Rules,
    cheating: Cheating,
    money: Money,
    busy: Ints,
    served: Ints,
    refused: Ints,
    now: float,
    settlement: int,
    counts: Counts,
) -> None:
    """A refused forged receipt, as the gateway's verifier takes it: no consumer to refund
    (nothing was charged), the table's slash, and a ban when the rule says so."""
    for k in np.flatnonzero(refused):
        provider = int(busy[k])
        reason = cheating.reasons[int(world.cheat_kind[provider]) + 1]
        counts.receipts_refused += 1
        number = int(world.requests[provider] - served[k] + refused[k])
        _punish(world, rules, money, provider, penalty_for(reason, None, 0, 0), number,
                f"receipt:{settlement}:{provider}", now)  # fmt: skip


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
    kind = world.cheat_kind[busy].astype(np.int64) + 1
    share = cheating.probability[kind]
    audited = cheating.audited[kind]
    cheated_and_seen = np.where(audited, share * cheating.detection[kind], 0.0)
    misjudged = (1.0 - share) * cheating.false_flag
    first_fails = cheated_and_seen + misjudged
    disputed = rng.binomial(audits, first_fails)
    world.clean_audits[busy] += audits - disputed
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
            closed = _dispute(world, rules, cheating, provider, cheated, now, rng)
            _apply(world, rules, money, closed, provider, cheated, int(cost[k]),
                   int(earned[k]), int(world.requests[provider] - served[k] + position),
                   f"audit:{settlement}:{provider}:{position}", now, counts)  # fmt: skip


def _candidates(
    world: World, exclude: int, now: float, rng: np.random.Generator
) -> list[Candidate]:
    """Online, unbanned providers drawn at random, with their record as the router sees
    it. A broken one is left out: its answer would fail, and the gateway would ask the
    next auditor (``Case.auditor_failed``)."""
    drawn = np.unique(rng.integers(0, world.size, size=CANDIDATES))
    able = world.online[drawn] & ~world.banned[drawn] & ~world.broken[drawn]
    drawn = drawn[able & (drawn != exclude)]
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
    """One disputed request's case, vote by vote, through the real ``Case``: an honest
    auditor fails a cheated request with its kind's detection and any other with the
    false-flag chance; an auditor that substitutes models answers with its own
    substitute as often as it cheats, failing the request."""
    kind = int(world.cheat_kind[provider]) + 1
    reason = c.reasons[kind] if cheated else WRONG_MODEL
    failed = Verdict(False, reason, (), {})
    honest_fail = float(c.detection[kind]) if cheated else c.false_flag
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
            theirs = int(world.cheat_kind[int(auditor)]) + 1
            own = float(c.probability[theirs]) if c.reasons[theirs] == WRONG_MODEL else 0.0
            fails = bool(rng.random() < own + (1.0 - own) * honest_fail)
        case.add(auditor, failed if fails else PASSED)
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
    penalty = penalty_for(closed.reason, CONSUMERS, cost, earned)
    _punish(world, rules, money, provider, penalty, request_number, reference, now)


def _punish(
    world: World,
    rules: Rules,
    money: Money,
    provider: int,
    penalty: Penalty,
    request_number: int,
    reference: str,
    now: float,
) -> None:
    """A caught provider, as the gateway's verifier takes it: the penalty in its order
    (the slashing table's share of the member's stake), and a ban when the rule says so.
    The first catch is recorded (at its ``request_number``) for the catch statistics."""
    if world.caught_after[provider] < 0:
        world.caught_after[provider] = request_number
        world.caught_at[provider] = now
    slash = rules.slashing.amount(penalty.reason, int(world.stake[provider]))
    world.stake[provider] -= money.penalise(world, provider, penalty, slash, reference, now)
    rule = rules.slashing.rule(penalty.reason)
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
