"""Audit sampling: the rate formula, its economic bound, and the keyed draw."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.ledger.slashing_table import SlashingTable
from tessera.verify.penalties import cheat_exposure
from tessera.verify.sampling import (
    AuditPolicy,
    audit_draw,
    audit_rate,
    economic_rate,
    reputation_rate,
    should_audit,
)

TOKEN = 10**9
POLICY = AuditPolicy()
SECRET = b"gateway secret, 32 bytes or so.."


def test_a_newcomer_is_audited_on_every_request_during_probation() -> None:
    for clean in range(POLICY.probation_audits):
        assert audit_rate(POLICY, clean, 0, gain=1, loss=10 * TOKEN) == 1.0


def test_after_probation_the_rate_halves_every_half_life() -> None:
    start = POLICY.probation_audits
    assert reputation_rate(POLICY, start, 0) == 1.0
    assert reputation_rate(POLICY, start + 25, 0) == pytest.approx(0.5)
    assert reputation_rate(POLICY, start + 50, 0) == pytest.approx(0.25)
    rates = [reputation_rate(POLICY, c, 0) for c in range(start, start + 300)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_the_rate_never_falls_below_the_floor() -> None:
    assert reputation_rate(POLICY, 10_000, 0) == POLICY.floor_rate
    # The worked example: the floor is reached at 20 + 25 * log2(50) = 161.1 clean audits.
    assert reputation_rate(POLICY, 161, 0) > POLICY.floor_rate
    assert reputation_rate(POLICY, 162, 0) == POLICY.floor_rate


def test_any_failure_puts_the_rate_back_to_one() -> None:
    assert audit_rate(POLICY, 10_000, 1, gain=1, loss=10 * TOKEN) == 1.0


def test_the_worked_example_in_tokens() -> None:
    earnings = 2 * TOKEN // 1000  # 0.002 tokens
    loss = cheat_exposure(SlashingTable(), 10 * TOKEN, earnings)  # wrong_model: 50 %
    assert loss == 5 * TOKEN + earnings
    assert economic_rate(POLICY, earnings, loss) == pytest.approx(0.000888, rel=1e-3)
    assert audit_rate(POLICY, 10_000, 0, earnings, loss) == POLICY.floor_rate
    big = cheat_exposure(SlashingTable(), 10 * TOKEN, TOKEN)
    assert audit_rate(POLICY, 10_000, 0, TOKEN, big) == pytest.approx(2 / (0.9 * 6))


def test_the_bound_holds_where_plain_division_rounds_below_it() -> None:
    # 2 * 1 / (0.9 * 5) rounds down: multiplied back it falls short of 2 by one ulp.
    plain = 2.0 * 1 / (0.9 * 5)
    assert plain * 0.9 * 5 < 2.0 * 1
    rate = economic_rate(POLICY, 1, 5)
    assert rate * 0.9 * 5 >= 2.0 * 1
    assert rate == math.nextafter(plain, 1.0)


def test_nothing_to_lose_means_always_audited_and_nothing_to_gain_means_reputation_only() -> None:
    assert economic_rate(POLICY, 5, 0) == 1.0
    assert economic_rate(POLICY, 0, 0) == 0.0
    assert audit_rate(POLICY, 10_000, 0, 0, 0) == POLICY.floor_rate


policies = st.builds(
    AuditPolicy,
    probation_audits=st.integers(0, 100),
    half_life_audits=st.floats(0.5, 1_000.0),
    floor_rate=st.floats(0.0, 1.0),
    deterrence=st.floats(0.01, 100.0),
    detection=st.floats(0.01, 1.0),
)
units = st.integers(0, 10**18)


@given(policies, st.integers(0, 10_000), st.integers(0, 5), units, units)
def test_cheating_is_a_losing_bet_whenever_not_every_request_is_audited(
    policy: AuditPolicy, clean: int, failed: int, gain: int, loss: int
) -> None:
    rate = audit_rate(policy, clean, failed, gain, loss)
    assert 0.0 <= rate <= 1.0
    if rate < 1.0:
        assert rate * policy.detection * loss >= policy.deterrence * gain
    assert rate >= reputation_rate(policy, clean, failed)


@given(policies, units, st.integers(1, 10**18))
def test_the_economic_rate_is_tight(policy: AuditPolicy, gain: int, loss: int) -> None:
    rate = economic_rate(policy, gain, loss)
    exact = policy.deterrence * gain / (policy.detection * loss)
    assert rate == 1.0 or rate == pytest.approx(exact, rel=1e-12)


def test_policy_knobs_are_checked() -> None:
    for bad in (
        {"probation_audits": -1},
        {"half_life_audits": 0.0},
        {"floor_rate": 1.5},
        {"deterrence": 0.0},
        {"detection": 0.0},
        {"detection": 1.1},
    ):
        with pytest.raises(ValueError):
            AuditPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        reputation_rate(POLICY, -1, 0)
    with pytest.raises(ValueError):
        economic_rate(POLICY, -1, 10)


def test_the_draw_is_keyed_and_repeatable() -> None:
    ids = [f"req_{i:06d}" for i in range(200)]
    first = [audit_draw(SECRET, r) for r in ids]
    assert first == [audit_draw(SECRET, r) for r in ids]
    other = [audit_draw(b"another secret", r) for r in ids]
    assert sum(a != b for a, b in zip(first, other, strict=True)) == len(ids)
    assert all(0.0 <= d < 1.0 for d in first + other)
    with pytest.raises(ValueError, match="secret"):
        audit_draw(b"", "req_1")


def test_the_draw_is_uniform_over_many_ids() -> None:
    n, buckets = 20_000, 20
    counts = [0] * buckets
    for i in range(n):
        counts[int(audit_draw(SECRET, f"req_{i}") * buckets)] += 1
    expected = n / buckets
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    # 19 degrees of freedom: chi2 above 43.8 has probability 0.001 for a uniform draw.
    assert chi2 < 43.8, counts


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.25, 1.0])
def test_should_audit_picks_about_the_rate(rate: float) -> None:
    n = 10_000
    picked = sum(should_audit(SECRET, f"req_{i}", rate) for i in range(n))
    if rate in (0.0, 1.0):
        assert picked == n * rate
    else:
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(picked - n * rate) < 4 * sigma
