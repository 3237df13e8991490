"""Reputation: smoothed, monotone scores; the book's events, snapshot and restore."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.verify.reputation import Reputation, ReputationBook

FAILURES = ("jobs_failed", "audits_failed", "dissents", "receipts_refused", "slashes")

records = st.builds(
    Reputation,
    jobs_completed=st.integers(0, 10**6),
    jobs_failed=st.integers(0, 10**6),
    audits_passed=st.integers(0, 10**4),
    audits_failed=st.integers(0, 100),
    audits_cleared=st.integers(0, 100),
    dissents=st.integers(0, 100),
    receipts_refused=st.integers(0, 100),
    slashes=st.integers(0, 100),
    online_s=st.floats(0, 1e8),
    seen_s=st.floats(0, 1e8),
)


def test_a_newcomer_is_neither_trusted_nor_condemned() -> None:
    fresh = Reputation()
    assert 0.0 < fresh.score() < 1.0
    assert fresh.score() == pytest.approx(0.5)
    assert fresh.completion_rate() == pytest.approx(0.5)
    assert fresh.uptime() == pytest.approx(0.5)


def test_a_long_clean_record_scores_high_but_never_one() -> None:
    good = Reputation(jobs_completed=10_000, audits_passed=300, online_s=1e7, seen_s=1e7)
    assert 0.99 < good.score() < 1.0


def test_an_upheld_cheat_weighs_more_than_many_clean_audits() -> None:
    clean = Reputation(jobs_completed=1000, audits_passed=50, online_s=1e6, seen_s=1e6)
    caught = replace(clean, audits_failed=1, slashes=1)
    assert caught.score() < clean.score() - 0.2


@given(records, st.sampled_from(FAILURES), st.integers(1, 50))
def test_more_failures_never_raise_the_score(record: Reputation, field: str, more: int) -> None:
    worse = replace(record, **{field: getattr(record, field) + more})
    assert 0.0 <= record.score() <= 1.0
    assert worse.score() <= record.score()


@given(records, st.floats(0, 1e6))
def test_more_time_offline_never_raises_the_score(record: Reputation, offline: float) -> None:
    record = replace(record, online_s=min(record.online_s, record.seen_s))
    later = replace(record, seen_s=record.seen_s + offline)
    assert later.uptime() <= record.uptime() + 1e-12
    assert later.score() <= record.score() + 1e-12


def test_uptime_counts_no_more_time_online_than_seen() -> None:
    assert Reputation(online_s=1e6, seen_s=0.0).uptime() == pytest.approx(0.5)
    assert Reputation(online_s=1e6, seen_s=3600.0).uptime() == pytest.approx(1 - 1800 / 7200)


def test_clean_audits_count_passed_and_cleared_until_a_case_is_upheld() -> None:
    assert Reputation(audits_passed=30, audits_cleared=2).clean_audits() == 32
    assert Reputation(audits_passed=30, audits_failed=1).clean_audits() == 0


def test_the_book_counts_events_per_provider() -> None:
    book = ReputationBook()
    book.job_completed("a")
    book.job_completed("a")
    book.job_failed("a")
    book.audit_passed("a")
    book.audit_failed("b")
    book.audit_cleared("b")
    book.dissent("b")
    book.receipt_refused("b")
    book.slashed("b")
    book.online("a", 30.0)
    book.seen("a", 60.0)
    a, b = book.get("a"), book.get("b")
    assert (a.jobs_completed, a.jobs_failed, a.audits_passed) == (2, 1, 1)
    assert (a.online_s, a.seen_s) == (30.0, 60.0)
    assert (b.audits_failed, b.audits_cleared, b.dissents, b.receipts_refused, b.slashes) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert len(book) == 2 and "a" in book and "c" not in book
    assert book.get("c") == Reputation() and "c" in book


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_time_is_finite_and_not_negative(seconds: float) -> None:
    with pytest.raises(ValueError):
        ReputationBook().online("a", seconds)
    with pytest.raises(ValueError):
        ReputationBook().seen("a", seconds)


def test_a_snapshot_is_a_copy_and_restores_the_same_book() -> None:
    book = ReputationBook()
    book.job_completed("a")
    book.audit_failed("b")
    book.seen("b", 12.5)
    snap = book.snapshot()
    book.job_completed("a")
    assert snap["a"].jobs_completed == 1
    stored = json.loads(json.dumps({pid: asdict(r) for pid, r in snap.items()}))
    assert ReputationBook.restore(stored).snapshot() == snap
    public = {pid: r.public() for pid, r in snap.items()}
    assert ReputationBook.restore(public).snapshot() == snap


def test_public_shows_the_derived_numbers() -> None:
    record = Reputation(jobs_completed=8, jobs_failed=0, audits_passed=3)
    public = record.public()
    assert public["completion_rate"] == pytest.approx(0.9)
    assert public["score"] == record.score() and public["clean_audits"] == 3
    json.dumps(public, allow_nan=False)


@pytest.mark.parametrize(
    "raw",
    [
        {"jobs_completed": -1},
        {"jobs_completed": 1.5},
        {"slashes": True},
        {"online_s": "10"},
        {"online_s": -3.0},
        {"karma": 3},
    ],
)
def test_restore_refuses_what_is_not_a_record(raw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="p1"):
        ReputationBook.restore({"p1": raw})
