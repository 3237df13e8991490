"""The simulator's batch form of the audit rate decides exactly as the gateway's single
form, record by record, on records drawn to hit every branch."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tessera.verify.sampling import AuditPolicy, audit_rate, audit_rates


@pytest.mark.parametrize(
    "policy",
    [AuditPolicy(), AuditPolicy(probation_audits=0, floor_rate=0.05, deterrence=0.5),
     AuditPolicy(probation_audits=3, half_life_audits=1.5, floor_rate=0.0, detection=0.3)],
)  # fmt: skip
def test_batch_and_single_rates_are_the_same(policy: AuditPolicy) -> None:
    rng = random.Random(11)
    n = 5_000
    clean = [rng.choice([0, 1, 19, 20, 21, 50, 400, rng.randrange(10_000)]) for _ in range(n)]
    failed = [rng.choice([0, 0, 0, 1, 3]) for _ in range(n)]
    gain = [rng.choice([0, 1, 7, 2_000_000, rng.randrange(10**12)]) for _ in range(n)]
    loss = [rng.choice([-5, 0, 1, 3, 5 * 10**9, rng.randrange(10**15)]) for _ in range(n)]
    batch = audit_rates(policy, np.array(clean), np.array(failed), np.array(gain), np.array(loss))
    single = [
        audit_rate(policy, c, f, g, lo)
        for c, f, g, lo in zip(clean, failed, gain, loss, strict=True)
    ]
    assert batch.tolist() == single


def test_negative_counts_are_refused_as_in_the_single_form() -> None:
    with pytest.raises(ValueError):
        audit_rates(AuditPolicy(), np.array([-1]), np.array([0]), np.array([1]), np.array([1]))
