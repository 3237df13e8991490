"""Disputes: two of three auditors decide; failed auditors are excluded and never count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.verify.disputes import Case
from tessera.verify.scoring import TAMPERED_OUTPUT, WRONG_MODEL, Finding, Verdict, malformed

PASS = Verdict(True, None, (), {"tokens": 3.0})


def fail(reason: str = WRONG_MODEL) -> Verdict:
    return Verdict(False, reason, (Finding("logprob", 0, 1, "far off"),), {})


def case() -> Case:
    return Case(request_id="req_1", provider_id="P", model="tiny")


def test_a_case_starts_open_and_asks_for_one_auditor() -> None:
    c = case()
    assert c.status == "open" and c.auditors_needed() == 1 and c.reason is None
    assert c.excluded() == {"P"}


def test_a_passing_first_audit_closes_the_case() -> None:
    c = case()
    c.add("A", PASS)
    assert c.status == "passed" and c.auditors_needed() == 0 and c.dissenters() == []


def test_a_failed_first_audit_asks_two_more_auditors() -> None:
    c = case()
    c.add("A", fail())
    assert c.status == "open" and c.auditors_needed() == 2
    c.add("B", PASS)
    assert c.status == "open" and c.auditors_needed() == 1
    assert c.excluded() == {"P", "A", "B"}


def test_two_failures_uphold_and_the_passing_auditor_dissents() -> None:
    c = case()
    c.add("A", fail(TAMPERED_OUTPUT))
    c.add("B", PASS)
    c.add("C", fail(TAMPERED_OUTPUT))
    assert c.status == "upheld" and c.reason == TAMPERED_OUTPUT
    assert c.dissenters() == ["B"] and c.auditors_needed() == 0


def test_two_failures_in_a_row_uphold_at_once() -> None:
    c = case()
    c.add("A", fail())
    c.add("B", fail())
    assert c.status == "upheld" and c.reason == WRONG_MODEL and c.dissenters() == []


def test_two_passes_clear_and_the_first_auditor_dissents() -> None:
    c = case()
    c.add("A", fail())
    c.add("B", PASS)
    c.add("C", PASS)
    assert c.status == "cleared" and c.reason is None and c.dissenters() == ["A"]


def test_a_split_on_reasons_goes_to_wrong_model() -> None:
    c = case()
    c.add("A", fail(TAMPERED_OUTPUT))
    c.add("B", fail(WRONG_MODEL))
    assert c.reason == WRONG_MODEL
    c = case()
    c.add("A", fail(TAMPERED_OUTPUT))
    c.add("B", fail("forged_receipt"))
    assert c.reason == WRONG_MODEL


def test_an_auditor_that_failed_is_excluded_and_not_counted() -> None:
    c = case()
    c.add("A", fail())
    c.add("B", malformed("scored 2 tokens of 3"))
    c.auditor_failed("C")
    c.auditor_failed("C")  # a repeated timeout is harmless
    assert c.status == "open" and c.auditors_needed() == 2
    assert c.excluded() == {"P", "A", "B", "C"}
    assert [a for a, _ in c.verdicts] == ["A"]
    with pytest.raises(ValueError, match="already"):
        c.add("B", PASS)
    c.add("D", fail())
    assert c.status == "upheld" and c.public()["failed_auditors"] == ["B", "C"]


def test_the_provider_never_audits_itself_and_no_auditor_votes_twice() -> None:
    c = case()
    with pytest.raises(ValueError, match="own output"):
        c.add("P", PASS)
    with pytest.raises(ValueError, match="own output"):
        c.auditor_failed("P")
    c.add("A", fail())
    with pytest.raises(ValueError, match="already"):
        c.add("A", fail())
    with pytest.raises(ValueError, match="already"):
        c.auditor_failed("A")


def test_a_decided_case_takes_no_more_votes() -> None:
    c = case()
    c.add("A", PASS)
    with pytest.raises(ValueError, match="already passed"):
        c.add("B", fail())


def test_public_lists_the_votes() -> None:
    c = case()
    c.add("A", fail())
    c.add("B", fail())
    assert c.public() == {
        "request_id": "req_1",
        "provider_id": "P",
        "model": "tiny",
        "status": "upheld",
        "reason": WRONG_MODEL,
        "votes": [
            {"auditor_id": "A", "passed": False, "reason": WRONG_MODEL},
            {"auditor_id": "B", "passed": False, "reason": WRONG_MODEL},
        ],
        "failed_auditors": [],
    }


# A vote is True (passes), a failing reason, or None (the auditor failed to answer).
votes = st.lists(
    st.one_of(st.just(True), st.sampled_from([WRONG_MODEL, TAMPERED_OUTPUT]), st.none()),
    max_size=12,
)


@given(votes)
def test_any_order_of_votes_decides_within_three_and_upholds_only_on_two_failures(
    sequence: list[bool | str | None],
) -> None:
    c = case()
    for n, vote in enumerate(sequence):
        if c.decided:
            break
        auditor = f"A{n}"
        if vote is None:
            c.auditor_failed(auditor)
        else:
            c.add(auditor, PASS if vote is True else fail(vote))
        counted = len(c.verdicts)
        assert counted <= 3
        assert c.auditors_needed() == (0 if c.decided else 3 - counted if counted else 1)
    counted_votes = [v for v in sequence if v is not None]
    fails = sum(1 for _, v in c.verdicts if not v.passed)
    if len(counted_votes) >= 3:
        assert c.decided
    if c.status == "upheld":
        assert fails >= 2 and c.reason in (WRONG_MODEL, TAMPERED_OUTPUT)
    if c.status == "passed":
        assert len(c.verdicts) == 1
    if c.status == "cleared":
        assert len(c.verdicts) - fails >= 2
    if c.decided and c.status != "passed":
        majority_passed = c.status == "cleared"
        assert all(v.passed != majority_passed for a, v in c.verdicts if a in c.dissenters())
        assert len(c.dissenters()) <= 1
