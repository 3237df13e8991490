"""Which finished requests get audited: a rate per provider and a draw the provider
cannot predict.

The draw: HMAC-SHA256 of the request id under the gateway's secret; the first 8 bytes as a
big-endian integer / 2**64 (kept to the 53 bits a double holds, so never 1.0) give a number
in [0, 1), and the request is audited when it is below the rate. Without the secret a provider cannot tell which of its requests will be
checked, so it must serve every one honestly or gamble.

The rate::

    rate = clamp(max(reputation_rate, economic_rate), 0, 1)

    reputation_rate = 1                                  while clean_audits < probation_audits
                                                         or failed_audits > 0
                    = max(floor_rate, 0.5 ** ((clean_audits - probation_audits)
                                              / half_life_audits))       otherwise

    economic_rate   = deterrence * gain / (detection * loss)     (1 when loss <= 0)

``gain`` is what cheating on this one request can earn (its earnings, base units); ``loss``
what a caught cheat loses: the slash (its share of the exposed stake) plus the forfeited
earnings (``verify.penalties.cheat_exposure``). ``detection`` is the chance that an
audit of a cheated request ends in an upheld case (the auditor flags it and 2 of 3 agree).
Because rate >= economic_rate, whenever rate < 1::

    rate * detection * loss >= deterrence * gain

the expected loss from cheating is at least ``deterrence`` times its gain (checked in
floating point exactly as written). A newcomer is audited on every request until
``probation_audits`` clean audits; then the rate halves every ``half_life_audits`` clean
audits down to ``floor_rate``; any open or upheld failure puts it back to 1.

Example (defaults; 1 token = 10**9 base units): a provider with 10 tokens of stake, a
``wrong_model`` share of 50 %, serving a request that earns it 0.002 tokens. loss = 5 +
0.002 = 5.002 tokens, economic_rate = 2 x 0.002 / (0.9 x 5.002) = 0.089 %, so after
probation its rate decays from 1 to the 2 % floor (reached after 20 + 25 x log2(50) = 162
clean audits). A request that earns 1 token instead gives economic_rate = 2 x 1 / (0.9 x
6) = 37 %: large requests stay likely to be audited whatever the record.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_DRAW_BYTES = 8
_DROPPED_BITS = 8 * _DRAW_BYTES - 53


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    """The operator's knobs; see the module docstring for the formula."""

    probation_audits: int = 20
    half_life_audits: float = 25.0
    floor_rate: float = 0.02
    deterrence: float = 2.0
    detection: float = 0.9

    def __post_init__(self) -> None:
        if self.probation_audits < 0:
            raise ValueError("probation_audits must be >= 0")
        if not (math.isfinite(self.half_life_audits) and self.half_life_audits > 0):
            raise ValueError("half_life_audits must be a finite number > 0")
        if not 0.0 <= self.floor_rate <= 1.0:
            raise ValueError("floor_rate must lie in [0, 1]")
        if not (math.isfinite(self.deterrence) and self.deterrence > 0):
            raise ValueError("deterrence must be a finite number > 0")
        if not 0.0 < self.detection <= 1.0:
            raise ValueError("detection must lie in (0, 1]")


def reputation_rate(policy: AuditPolicy, clean_audits: int, failed_audits: int) -> float:
    """1 in probation or after a failure, then halving per half-life down to the floor."""
    if clean_audits < 0 or failed_audits < 0:
        raise ValueError("audit counts are never negative")
    if clean_audits < policy.probation_audits or failed_audits > 0:
        return 1.0
    # A positive base: the power is real (typeshed types float ** float as Any for the
    # complex result of a negative base).
    decayed: float = 0.5 ** ((clean_audits - policy.probation_audits) / policy.half_life_audits)
    return min(1.0, max(policy.floor_rate, decayed))


def economic_rate(policy: AuditPolicy, gain: int, loss: int) -> float:
    """The least rate at which rate * detection * loss >= deterrence * gain (floats, as
    written); 1 when nothing can be lost, 0 when nothing can be gained."""
    if gain < 0:
        raise ValueError("gain is never negative")
    if gain == 0:
        return 0.0
    if loss <= 0:
        return 1.0
    target = policy.deterrence * gain
    rate = target / (policy.detection * loss)
    if rate >= 1.0:
        return 1.0
    # Division rounds to nearest: step up the last bit until the bound holds as written.
    while rate < 1.0 and rate * policy.detection * loss < target:
        rate = math.nextafter(rate, math.inf)
    return min(rate, 1.0)


def audit_rate(
    policy: AuditPolicy, clean_audits: int, failed_audits: int, gain: int, loss: int
) -> float:
    """The chance this provider's request is audited, in [0, 1] (module docstring)."""
    rate = max(
        reputation_rate(policy, clean_audits, failed_audits), economic_rate(policy, gain, loss)
    )
    return min(1.0, max(0.0, rate))


def audit_draw(secret: bytes, request_id: str) -> float:
    """A number in [0, 1) that only the holder of ``secret`` can compute for a request."""
    if not secret:
        raise ValueError("the audit secret must not be empty: providers could compute draws")
    digest = hmac.new(secret, request_id.encode("utf-8"), hashlib.sha256).digest()
    # The top 53 of the 64 bits: a double holds them exactly, so the draw never rounds to 1.
    return (int.from_bytes(digest[:_DRAW_BYTES], "big") >> _DROPPED_BITS) / 2.0**53


def should_audit(secret: bytes, request_id: str, rate: float) -> bool:
    """True when this request's draw falls below ``rate`` (always at 1, never at 0)."""
    return audit_draw(secret, request_id) < rate


def audit_rates(
    policy: AuditPolicy,
    clean_audits: npt.NDArray[np.int64],
    failed_audits: npt.NDArray[np.int64],
    gain: npt.NDArray[np.int64],
    loss: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """:func:`audit_rate` for many providers at once (the simulator's form): element for
    element the same rate, to the last bit (a test holds them together)."""
    clean = np.asarray(clean_audits, dtype=np.int64)
    failed = np.asarray(failed_audits, dtype=np.int64)
    gains = np.asarray(gain, dtype=np.int64)
    losses = np.asarray(loss, dtype=np.int64)
    if (clean < 0).any() or (failed < 0).any() or (gains < 0).any():
        raise ValueError("audit counts and gains are never negative")
    decayed = np.power(0.5, (clean - policy.probation_audits) / policy.half_life_audits)
    by_record = np.minimum(1.0, np.maximum(policy.floor_rate, decayed))
    by_record[(clean < policy.probation_audits) | (failed > 0)] = 1.0
    target = policy.deterrence * gains.astype(np.float64)
    safe_loss = np.where(losses > 0, losses, 1).astype(np.float64)
    economic = target / (policy.detection * safe_loss)
    # As economic_rate: step up the last bit until rate * detection * loss >= target.
    short = (economic < 1.0) & (economic * policy.detection * safe_loss < target)
    while short.any():
        economic[short] = np.nextafter(economic[short], np.inf)
        short &= (economic < 1.0) & (economic * policy.detection * safe_loss < target)
    economic = np.minimum(economic, 1.0)
    economic[losses <= 0] = 1.0
    economic[gains == 0] = 0.0
    return np.minimum(1.0, np.maximum(0.0, np.maximum(by_record, economic)))
