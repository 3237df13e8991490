"""A refusal's wait is spread over up to a second past the policy's (never more than the
policy's again), so clients refused together do not all come back together; the wait goes
out in whole seconds and in milliseconds."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from tessera.config import GatewaySettings
from tessera.errors import RateLimited, error_headers
from tessera.gateway.admission import RETRY_SPREAD_S, RequestAdmission


def refused_waits(limit: dict[str, int], refusals: int, seed: int = 7) -> list[float]:
    unlimited: dict[str, int | None] = {
        "key_max_concurrent_requests": None,
        "key_requests_per_minute": None,
        "account_max_concurrent_requests": None,
        "account_requests_per_minute": None,
    }
    settings = GatewaySettings(**{**unlimited, **limit})
    admission = RequestAdmission(settings, clock=lambda: 100.0, rng=random.Random(seed))
    key = SimpleNamespace(id="key", account_id="account")
    admission.admit("first", key, 0)  # fills a limit of one
    waits = []
    for n in range(refusals):
        with pytest.raises(RateLimited) as refused:
            admission.admit(f"r{n}", key, 0)
        waits.append(refused.value.retry_after_s)
    return waits


@pytest.mark.parametrize(
    ("limit", "policy_wait_s"),
    [({"key_max_concurrent_requests": 1}, 1.0), ({"key_requests_per_minute": 1}, 60.0)],
    ids=["concurrency", "requests-per-minute"],
)
def test_waits_are_never_shorter_than_the_policys_and_spread_over_a_second_past_it(
    limit: dict[str, int], policy_wait_s: float
) -> None:
    waits = refused_waits(limit, 200)
    spread_s = min(policy_wait_s, RETRY_SPREAD_S)
    assert min(waits) >= policy_wait_s
    assert max(waits) <= policy_wait_s + spread_s
    assert len({round(w, 3) for w in waits}) > 150, "refused clients would return together"
    buckets = [0, 0, 0, 0]  # the spread covers its whole range, not one end of it
    for wait in waits:
        buckets[min(3, int((wait - policy_wait_s) / spread_s * 4))] += 1
    assert min(buckets) >= 20, buckets


def test_the_same_seed_gives_the_same_waits() -> None:
    limit = {"key_max_concurrent_requests": 1}
    assert refused_waits(limit, 5, seed=3) == refused_waits(limit, 5, seed=3)


def test_the_wait_goes_out_in_whole_seconds_rounded_up_and_in_milliseconds() -> None:
    headers = error_headers(RateLimited("slow down", retry_after_s=1.2345))
    assert headers == {"retry-after": "2", "retry-after-ms": "1235"}
    assert error_headers(RateLimited("x", retry_after_s=0.0001)) == {
        "retry-after": "1",
        "retry-after-ms": "1",
    }
