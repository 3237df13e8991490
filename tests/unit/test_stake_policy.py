"""Minimum stake: a default, per-model amounts, and an amount per announced GPU."""

from __future__ import annotations

from tessera.market.registry import ProviderRegistry
from tessera.market.stake_policy import StakePolicy
from tessera.protocol.wire import GpuInfo

from factories import capabilities, offer


def test_required_stake_is_the_larger_of_model_and_gpu_amounts() -> None:
    registry = ProviderRegistry()
    caps = capabilities(models=[offer("small"), offer("big")])
    rig = caps.model_copy(
        update={
            "hardware": caps.hardware.model_copy(
                update={"gpus": [GpuInfo(name="H100", memory_bytes=80 * 2**30)] * 4}
            )
        }
    )
    laptop = registry.add("laptop", caps, now=0.0)
    server = registry.add("server", rig, now=0.0)
    policy = StakePolicy(default=10, per_model={"big": 500}, per_gpu=50)
    assert policy.required(laptop, "small") == 10
    assert policy.required(laptop, "big") == 500
    assert policy.required(server, "small") == 200  # 4 GPUs x 50
    assert policy.required(server, "big") == 500
    assert StakePolicy().required(server, "small") == 0
