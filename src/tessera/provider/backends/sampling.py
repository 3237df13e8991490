"""Choosing the next token, reproducibly when the job is seeded.

A seeded answer must be reproducible from any point: when a provider dies mid-stream,
another one continues the same answer (``Job.continue_from``) and has to draw exactly what
the first would have drawn next. So the randomness is counter-based: the draw for output
position ``i`` (counted from the start of the whole answer) is one uniform number that
depends on ``(seed, i)`` alone (:func:`counter_uniform`), never on how many draws came
before. An unseeded job draws fresh system randomness (:func:`fresh_uniform`).

The uniform picks a token by inverse CDF over the nucleus: the distribution sorted by
probability (ties in vocabulary order), cut at ``top_p``, accumulated in float64 on the
logits' device (float32 on mps, which has none). The same uniform over the same logits gives the same token on any device,
up to rounding: a continuation on other hardware, whose logits differ in the last bits,
can still pick another token where the uniform falls within that rounding of a boundary
(rare, and the audit's tolerances cover it; greedy answers have the same caveat at ties).
"""

from __future__ import annotations

import hashlib
import secrets

import torch

_DOMAIN = b"tessera/sample/v1:"
_BITS = 53  # a double's mantissa: every value k / 2**53 is exact


def counter_uniform(seed: int, position: int) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and the output ``position`` alone."""
    digest = hashlib.blake2b(_DOMAIN + f"{seed}:{position}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _BITS)) / (1 << _BITS)


def fresh_uniform() -> float:
    """A uniform number in [0, 1) from the system's randomness (unseeded jobs)."""
    return secrets.randbits(_BITS) / (1 << _BITS)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, uniform: float) -> int:
    """The next token from 1-D ``logits``: the argmax at temperature 0 (``uniform`` unused),
    else the token whose slice of the sorted, top_p-filtered distribution holds ``uniform``.

    ``uniform`` is in [0, 1); 0 picks the most likely token. Tokens of probability 0 (also
    those outside the nucleus) are never picked.
    """
    if temperature == 0.0:
        return int(torch.argmax(logits))
    wide = torch.float32 if logits.device.type == "mps" else torch.float64  # mps has no float64
    probs = torch.softmax(logits.to(wide) / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    if top_p < 1.0:
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    cdf = torch.cumsum(sorted_probs, dim=-1)
    target = torch.tensor([uniform], dtype=cdf.dtype, device=cdf.device) * cdf[-1]
    at = torch.searchsorted(cdf, target, right=True)
    # Rounding can put the target on the total: take the last token that has any mass.
    last = (torch.count_nonzero(sorted_probs) - 1).clamp(min=0)
    return int(order[torch.minimum(at, last)])  # one device sync per token
