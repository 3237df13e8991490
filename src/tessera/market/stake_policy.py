"""How much bonded stake a provider needs before it is routed work.

The operator sets a default, optional per-model amounts (a large model's wrong answers
cost users more, so cheating on it should put more at risk), and an optional amount per
GPU (a big rig takes more traffic, so it should have more to lose). A provider needs the
larger of its model's amount and its GPU amount.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tessera.market.registry import LiveProvider


@dataclass(frozen=True, slots=True)
class StakePolicy:
    default: int = 0
    per_model: Mapping[str, int] = field(default_factory=dict)
    per_gpu: int = 0

    def required(self, provider: LiveProvider, model: str) -> int:
        gpus = len(provider.capabilities.hardware.gpus)
        return max(self.per_model.get(model, self.default), self.per_gpu * gpus)
