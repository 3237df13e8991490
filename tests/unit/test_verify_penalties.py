"""The rules the gateway and the simulator share: what a closed case does, the penalty's
order, bans, who audits, and whose fault a failed request is."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.ledger.slashing_table import SlashingTable, SlashRule
from tessera.market.refusals import CLIENT_CODES, job_event
from tessera.verify.auditors import Candidate, auditor_order
from tessera.verify.disputes import Case, upheld_chance
from tessera.verify.penalties import (
    auditor_pay,
    bans,
    cheat_exposure,
    cheat_exposures,
    close,
    penalty_for,
)
from tessera.verify.reputation import EVENTS, ReputationBook
from tessera.verify.scoring import Verdict

PASS = Verdict(True, None, (), {})


def fail(reason: str = "wrong_model") -> Verdict:
    return Verdict(False, reason, (), {})


def case_with(*votes: Verdict) -> Case:
    case = Case("r1", "p", "m")
    for i, verdict in enumerate(votes):
        case.add(f"a{i}", verdict)
    return case


def test_a_case_closes_with_its_status_reputation_event_and_dissenters() -> None:
    passed = close(case_with(PASS))
    assert (passed.status, passed.reputation_event, passed.dissenters) == (
        "passed",
        "audit_passed",
        (),
    )
    upheld = close(case_with(fail("tampered_output"), PASS, fail("tampered_output")))
    assert upheld.status == "upheld" and upheld.reason == "tampered_output"
    assert upheld.reputation_event == "audit_failed" and upheld.dissenters == ("a1",)
    cleared = close(case_with(fail(), PASS, PASS))
    assert cleared.status == "cleared" and cleared.reason is None
    assert cleared.reputation_event == "audit_cleared" and cleared.dissenters == ("a0",)


def test_a_case_without_enough_auditors_is_inconclusive_and_punishes_nobody() -> None:
    for case in (Case("r", "p", "m"), case_with(fail())):
        closed = close(case)
        assert closed.status == "inconclusive"
        assert closed.reputation_event is None and closed.reason is None
        assert closed.dissenters == ()


def test_the_penalty_refunds_from_earnings_first_and_the_slash_pays_the_rest() -> None:
    penalty = penalty_for("wrong_model", "consumer", refund=100, earnings=90)
    assert penalty.clawback == 90
    assert penalty.owed_after(90) == [("consumer", 10)]
    # The provider had withdrawn its earnings: the slash owes the whole refund.
    assert penalty.owed_after(0) == [("consumer", 100)]
    assert penalty_for("wrong_model", "consumer", 50, 90).owed_after(50) == []
    nobody = penalty_for("forged_receipt", None, 0, 0)
    assert nobody.clawback == 0 and nobody.owed_after(0) == []
    with pytest.raises(ValueError):
        penalty_for("wrong_model", "c", -1, 0)


def test_a_ban_follows_the_rule_or_repeated_failures() -> None:
    banning = SlashRule("wrong_model", 5_000, True, "x")
    lenient = SlashRule("downtime", 100, False, "y")
    assert bans(banning, 1, 2)
    assert not bans(lenient, 1, 2)
    assert bans(lenient, 2, 2)


@given(
    st.lists(st.tuples(st.integers(0, 10**15), st.integers(0, 10**12)), max_size=50),
    st.integers(1, 10_000),
)
def test_the_batch_exposure_decides_as_the_single_form(
    rows: list[tuple[int, int]], bps: int
) -> None:
    table = SlashingTable([SlashRule("wrong_model", bps, True, "x")])
    stake = np.array([r[0] for r in rows], dtype=np.int64)
    earnings = np.array([r[1] for r in rows], dtype=np.int64)
    batch = cheat_exposures(table, stake, earnings)
    assert [int(x) for x in batch] == [cheat_exposure(table, s, e) for s, e in rows]


def test_the_batch_exposure_is_exact_where_the_product_would_overflow() -> None:
    """stake * bps passes 2**63 for a stake near 1e15 base units (a million tokens)."""
    table = SlashingTable([SlashRule("wrong_model", 9_254, True, "x")])
    stakes = [996_704_077_962_195, 2**62, 2**63 - 1]
    batch = cheat_exposures(table, np.array(stakes, dtype=np.int64), np.zeros(3, dtype=np.int64))
    assert [int(x) for x in batch] == [cheat_exposure(table, s, 0) for s in stakes]


def test_exposure_and_auditor_pay_in_base_units() -> None:
    table = SlashingTable()
    assert cheat_exposure(table, 0, 7) == 7
    assert cheat_exposure(table, 1, 0) == 1  # at least one unit while stake is exposed
    assert cheat_exposure(table, 10**18, 5) == 5 * 10**17 + 5
    assert auditor_pay(1_500, 2_000_000) == 3_000
    assert auditor_pay(1, 999_999) == 0


def test_validators_audit_first_then_trusted_providers_by_reputation() -> None:
    candidates = [
        Candidate("new", False, clean_audits=3, audits_failed=0, reputation=0.99),
        Candidate("cheat", False, clean_audits=500, audits_failed=1, reputation=0.9),
        Candidate("good", False, clean_audits=50, audits_failed=0, reputation=0.8),
        Candidate("better", False, clean_audits=50, audits_failed=0, reputation=0.9),
        Candidate("val", True, clean_audits=0, audits_failed=0, reputation=0.1),
    ]
    assert auditor_order(candidates, 20, random.Random(1)) == ["val", "better", "good"]


def test_equal_auditors_are_asked_in_a_random_order() -> None:
    same = [Candidate(f"p{i}", False, 30, 0, 0.801 + i / 10_000) for i in range(6)]
    orders = {tuple(auditor_order(same, 20, random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1  # reputation differences below 0.01 do not decide
    assert auditor_order(same, 20, random.Random(3)) == auditor_order(same, 20, random.Random(3))


def test_a_request_the_client_got_wrong_never_counts_against_its_provider() -> None:
    assert job_event("ok", None) == "job_completed"
    assert job_event("error", "provider_failed") == "job_failed"
    assert job_event("error", "receipt_refused") == "job_failed"
    for code in (*CLIENT_CODES, "busy", "not_delivered", "ledger_unavailable"):
        assert job_event("error", code) is None, code
    assert job_event("cancelled", "client_disconnected") is None
    book = ReputationBook()
    for event in EVENTS:
        book.record("p", event)
    assert book.get("p").jobs_failed == 1 and book.get("p").slashes == 1
    with pytest.raises(ValueError, match="unknown reputation event"):
        book.record("p", "nonsense")


@pytest.mark.parametrize(("first", "then"), [(0.9, 0.9), (0.3, 0.6), (1.0, 0.0), (0.05, 0.05)])
def test_the_upheld_chance_is_what_cases_decide(first: float, then: float) -> None:
    """Follow every sequence of votes through a real Case: the chance that it ends
    upheld is the formula's."""

    def upheld(votes: tuple[bool, ...], chance: float) -> float:
        case = case_with(*(fail() if fails else PASS for fails in votes))
        if case.decided:
            return chance if case.status == "upheld" else 0.0
        p = first if not votes else then
        return upheld((*votes, True), chance * p) + upheld((*votes, False), chance * (1 - p))

    assert upheld((), 1.0) == pytest.approx(upheld_chance(first, then))
