"""How many forward passes a provider runs at once."""

from __future__ import annotations

import os

import pytest

from tessera.config import ProviderSettings
from tessera.provider.loading import turn_width


def test_an_operator_sets_it() -> None:
    assert turn_width(ProviderSettings(parallel_passes=3)) == 3


def test_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_PROVIDER_PARALLEL_PASSES", "1")
    assert turn_width(ProviderSettings(device="cpu", torch_threads=1)) == 1


def test_on_a_cpu_the_cores_go_to_passes_of_torch_threads_each() -> None:
    cores = len(os.sched_getaffinity(0))
    assert turn_width(ProviderSettings(device="cpu", torch_threads=1)) == cores
    assert turn_width(ProviderSettings(device="cpu", torch_threads=cores)) == 1
    assert turn_width(ProviderSettings(device="cpu", torch_threads=4 * cores)) == 1


def test_a_gpu_runs_one_pass_at_a_time() -> None:
    assert turn_width(ProviderSettings(device="cuda:0", torch_threads=1)) == 1


def test_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        ProviderSettings(parallel_passes=0)
