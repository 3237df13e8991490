"""Per-key and per-account admission on a fake clock: concurrency, requests and tokens per
minute, hedges as a second slot, exactly-once release, the waiting-room bound."""

from __future__ import annotations

import pytest

from tessera.market.admission import Admission, Limits, Refusal, Ticket, WaitingRoom

NONE = Limits()


def admit(
    admission: Admission,
    key: str = "k1",
    key_limits: Limits = NONE,
    account: str = "a1",
    account_limits: Limits = NONE,
    tokens: int = 0,
    now_s: float = 0.0,
) -> Ticket | Refusal:
    return admission.admit(key, key_limits, account, account_limits, tokens=tokens, now_s=now_s)


def ticket(decision: Ticket | Refusal) -> Ticket:
    assert isinstance(decision, Ticket), decision
    return decision


def refusal(decision: Ticket | Refusal) -> Refusal:
    assert isinstance(decision, Refusal), decision
    return decision


def test_a_key_gets_its_concurrency_and_no_more_until_one_ends() -> None:
    admission = Admission()
    limits = Limits(max_concurrent=2)
    first = ticket(admit(admission, key_limits=limits))
    ticket(admit(admission, key_limits=limits))
    refused = refusal(admit(admission, key_limits=limits))
    assert (refused.code, refused.scope, refused.limit) == (
        "too_many_concurrent_requests",
        "key",
        2,
    )
    assert refused.retry_after_s >= 1
    assert "2 concurrent requests" in refused.message()
    # Another key of the same account is not affected.
    ticket(admit(admission, key="k2", key_limits=limits))
    assert admission.in_flight("k1") == 2
    admission.release(first)
    assert admission.in_flight("k1") == 1
    ticket(admit(admission, key_limits=limits))


def test_release_is_idempotent_and_never_frees_another_requests_slot() -> None:
    admission = Admission()
    limits = Limits(max_concurrent=1)
    first = ticket(admit(admission, key_limits=limits))
    admission.release(first)
    admission.release(first)  # a second release of the same request changes nothing
    second = ticket(admit(admission, key_limits=limits))
    admission.release(first)
    assert admission.in_flight("k1") == 1
    refusal(admit(admission, key_limits=limits))
    admission.release(second)
    assert admission.in_flight("k1") == 0 and admission.in_flight("a1", "account") == 0


def test_an_account_bounds_all_its_keys_together() -> None:
    admission = Admission()
    account = Limits(max_concurrent=3)
    for key in ("k1", "k2", "k3"):
        ticket(admit(admission, key=key, account_limits=account))
    refused = refusal(admit(admission, key="k4", account_limits=account))
    assert (refused.code, refused.scope) == ("too_many_concurrent_requests", "account")
    # Another account is untouched.
    ticket(admit(admission, key="k5", account="a2", account_limits=account))


def test_a_refusal_consumes_nothing() -> None:
    admission = Admission()
    key = Limits(max_concurrent=1, requests_per_minute=10)
    account = Limits(max_concurrent=1)
    ticket(admit(admission, key="other", account_limits=account))
    for _ in range(20):  # refused by the account: the key's rate budget stays whole
        refusal(admit(admission, key_limits=key, account_limits=account))
    assert admission.in_flight("k1") == 0
    for _ in range(10):
        admission.release(ticket(admit(admission, key_limits=key, account="a2")))
    refused = refusal(admit(admission, key_limits=key, account="a2"))
    assert refused.code == "rate_limit_exceeded"


def test_requests_per_minute_is_a_bucket_that_refills_steadily() -> None:
    admission = Admission()
    limits = Limits(requests_per_minute=60)  # one a second, a burst of 60
    for i in range(60):
        admission.release(ticket(admit(admission, key_limits=limits, now_s=i * 0.001)))
    refused = refusal(admit(admission, key_limits=limits, now_s=0.1))
    assert (refused.code, refused.scope, refused.limit) == ("rate_limit_exceeded", "key", 60)
    assert refused.retry_after_s == pytest.approx(0.9, abs=0.01)  # until one more refills
    assert "60 requests per minute" in refused.message()
    admission.release(ticket(admit(admission, key_limits=limits, now_s=1.1)))
    refusal(admit(admission, key_limits=limits, now_s=1.2))
    # A whole minute idle refills the bucket, never beyond its size.
    for _ in range(60):
        admission.release(ticket(admit(admission, key_limits=limits, now_s=600.0)))
    refusal(admit(admission, key_limits=limits, now_s=600.0))


def test_tokens_per_minute_counts_each_requests_bound() -> None:
    admission = Admission()
    limits = Limits(tokens_per_minute=1_000)
    admission.release(ticket(admit(admission, key_limits=limits, tokens=600)))
    refused = refusal(admit(admission, key_limits=limits, tokens=600))
    assert (refused.code, refused.limit) == ("tokens_per_minute_exceeded", 1_000)
    assert refused.retry_after_s == pytest.approx(12.0)  # 200 tokens at 1000/60 a second
    ticket(admit(admission, key_limits=limits, tokens=400))
    # A request larger than a minute's budget waits for a full bucket, never forever.
    big = refusal(admit(admission, key_limits=limits, tokens=50_000, now_s=1.0))
    assert big.retry_after_s == pytest.approx(59.0)
    ticket(admit(admission, key_limits=limits, tokens=50_000, now_s=60.0))


def test_the_longest_wait_is_reported_when_several_limits_refuse() -> None:
    admission = Admission()
    key = Limits(max_concurrent=1, requests_per_minute=1)
    ticket(admit(admission, key_limits=key))
    refused = refusal(admit(admission, key_limits=key, now_s=1.0))
    assert refused.code == "rate_limit_exceeded"
    assert refused.retry_after_s == pytest.approx(59.0)


def test_a_zero_limit_suspends_the_key() -> None:
    admission = Admission()
    for limits in (Limits(max_concurrent=0), Limits(requests_per_minute=0)):
        refused = refusal(admit(admission, key_limits=limits))
        assert refused.limit == 0 and refused.retry_after_s == 60.0


def test_a_hedge_takes_a_second_slot_only_if_key_and_account_have_one() -> None:
    admission = Admission()
    key = Limits(max_concurrent=3)
    account = Limits(max_concurrent=4)
    first = ticket(admit(admission, key_limits=key, account_limits=account))
    assert admission.add_slot(first, key, account)
    assert admission.in_flight("k1") == 2
    second = ticket(admit(admission, key_limits=key, account_limits=account))
    assert not admission.add_slot(second, key, account)  # the key is full
    other = ticket(admit(admission, key="k2", account_limits=account))
    assert admission.in_flight("a1", "account") == 4
    admission.release(first)  # both of its slots
    assert admission.in_flight("k1") == 1 and admission.in_flight("a1", "account") == 2
    admission.release(other)
    assert admission.add_slot(second, key, account)
    admission.release(second)
    assert not admission.add_slot(second, key, account)  # released: no slot for a dead request
    assert admission.in_flight("k1") == 0 and admission.in_flight("a1", "account") == 0


def test_idle_subjects_are_forgotten() -> None:
    admission = Admission()
    limits = Limits(max_concurrent=5, requests_per_minute=100)
    for i in range(50):
        admission.release(ticket(admit(admission, key=f"k{i}", key_limits=limits)))
    busy = ticket(admit(admission, key="busy", key_limits=limits, now_s=30.0))
    assert admission.tracked() >= 50
    ticket(admit(admission, key="late", account="a2", key_limits=limits, now_s=200.0))
    assert admission.tracked() == 4  # busy and its account, late and its account
    admission.release(busy)


def test_the_waiting_room_bounds_requests_waiting_for_a_provider() -> None:
    room = WaitingRoom(max_waiting=2)
    assert room.enter() and room.enter()
    assert not room.enter()
    assert room.waiting == 2
    room.leave()
    assert room.enter()
    unbounded = WaitingRoom(max_waiting=None)
    assert all(unbounded.enter() for _ in range(1000))


def test_tokens_are_counted_after_admission_and_a_refusal_takes_none() -> None:
    admission = Admission()
    limits = Limits(tokens_per_minute=100)
    first = ticket(admit(admission, key_limits=limits))  # admitted before the body is read
    assert admission.take_tokens(first, limits, NONE, 80, now_s=0.0) is None
    second = ticket(admit(admission, key_limits=limits))
    refused = admission.take_tokens(second, limits, NONE, 80, now_s=0.0)
    assert refused is not None and refused.code == "tokens_per_minute_exceeded"
    assert refused.retry_after_s == pytest.approx(36.0)  # 60 more tokens at 100 a minute
    assert admission.take_tokens(second, limits, NONE, 20, now_s=0.0) is None  # nothing taken
