"""The in-process event bus: by type, in order, and a failing subscriber fails alone."""

from __future__ import annotations

import logging

import pytest

from tessera.gateway.events import EventBus, ProviderJoined, ProviderLeft


def test_subscribers_get_the_events_of_their_type_in_order() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(ProviderJoined, lambda e: seen.append(f"a:{e.provider_id}"))
    bus.subscribe(ProviderJoined, lambda e: seen.append(f"b:{e.provider_id}"))
    bus.subscribe(ProviderLeft, lambda e: seen.append(f"left:{e.provider_id}"))
    bus.publish(ProviderJoined("p1", "", "US", ("m",)))
    bus.publish(ProviderLeft("p1"))
    assert seen == ["a:p1", "b:p1", "left:p1"]


def test_an_event_nobody_subscribed_to_goes_nowhere() -> None:
    EventBus().publish(ProviderLeft("p1"))


def test_a_failing_subscriber_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(event: ProviderLeft) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(ProviderLeft, broken)
    bus.subscribe(ProviderLeft, lambda e: seen.append(e.provider_id))
    with caplog.at_level(logging.ERROR, logger="tessera.gateway.events"):
        bus.publish(ProviderLeft("p2"))
    assert seen == ["p2"]
    assert "a subscriber to ProviderLeft failed" in caplog.text
