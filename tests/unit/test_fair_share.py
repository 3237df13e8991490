"""The share of a model's slots one account may hold, and the running-job counts."""

from __future__ import annotations

from tessera.market.fair_share import RunningJobs, SharePolicy


def test_an_account_may_not_take_the_headroom() -> None:
    policy = SharePolicy(0.1)
    assert [policy.most(c) for c in (0, 1, 2, 3, 4, 10, 11, 100)] == [1, 1, 2, 3, 3, 9, 9, 90]
    assert SharePolicy(0.5).most(4) == 2
    assert SharePolicy(0.0).most(4) == 4  # no headroom: an account may fill the model


def test_running_jobs_count_per_account_and_model() -> None:
    running = RunningJobs()
    running.started("a", "m")
    running.started("a", "m")
    running.started("a", "other")
    running.started("b", "m")
    assert (running.count("a", "m"), running.count("a", "other"), running.count("b", "m")) == (
        2,
        1,
        1,
    )
    running.finished("a", "m")
    running.finished("a", "m")
    running.finished("a", "m")  # one too many: ignored, never negative
    assert running.count("a", "m") == 0
    running.started("a", "m")
    assert running.count("a", "m") == 1
