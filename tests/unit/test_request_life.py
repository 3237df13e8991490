"""A paid request's life: one settlement, decided by what reached the client."""

from __future__ import annotations

import pytest

from tessera.ledger.request_life import Capture, PaidRequest, Release


def started(provider: str = "p1") -> PaidRequest:
    life = PaidRequest("req-1")
    life.begin(provider)
    return life


def test_a_whole_answer_pays_its_provider_for_the_tokens_reported() -> None:
    life = started()
    assert life.answered(12, 5) == Capture("p1", 12, 5)
    assert life.phase == "captured" and life.settled


def test_one_settlement_only_whatever_comes_after() -> None:
    life = started()
    assert life.answered(12, 5) == Capture("p1", 12, 5)
    assert life.failed("provider_failed") is None
    assert life.abandoned() is None
    assert life.answered(99, 99) is None
    life.relayed(3)  # a late chunk report changes nothing
    assert life.settlement == Capture("p1", 12, 5)


def test_a_request_that_never_started_is_released() -> None:
    life = PaidRequest("req-1")
    assert life.failed("not_served") == Release("not_served")
    assert PaidRequest("req-2").abandoned() == Release("client_disconnected")


def test_a_client_leaving_mid_stream_pays_what_it_was_sent() -> None:
    life = started()
    life.relayed(1, prompt_tokens=7)
    life.relayed(2)
    assert life.abandoned() == Capture("p1", 7, 3)


def test_a_client_leaving_before_any_output_pays_nothing() -> None:
    assert started().abandoned() == Release("client_disconnected")


def test_a_continued_answer_pays_only_the_provider_that_finished_it() -> None:
    life = started("p1")
    life.relayed(4, prompt_tokens=10)
    # p1 vanished after 4 tokens; p2 continues, reading them as part of its prompt.
    life.begin("p2", prefix=4)
    life.relayed(3, prompt_tokens=14)
    assert life.answered(14, 3) == Capture("p2", 10, 3)


def test_a_continued_answer_abandoned_pays_the_continuing_provider_its_part() -> None:
    life = started("p1")
    life.relayed(4, prompt_tokens=10)
    life.begin("p2", prefix=4)
    assert life.abandoned() == Release("client_disconnected")  # p2 had sent nothing yet
    other = started("p1")
    other.relayed(4, prompt_tokens=10)
    other.begin("p2", prefix=4)
    other.relayed(2, prompt_tokens=14)
    assert other.abandoned() == Capture("p2", 10, 2)


def test_an_unproven_or_undelivered_answer_is_free() -> None:
    for reason in ("receipt_refused", "not_delivered", "provider_failed"):
        life = started()
        life.relayed(5, prompt_tokens=3)
        assert life.failed(reason) == Release(reason)


def test_events_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError):
        PaidRequest("req-1").relayed(1)
    with pytest.raises(ValueError):
        PaidRequest("req-1").answered(1, 1)
    with pytest.raises(ValueError):
        started().begin("p2", prefix=-1)
