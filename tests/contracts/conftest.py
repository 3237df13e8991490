"""Fixtures for the contract tests: compile once per session, deploy fresh per test."""

from __future__ import annotations

from collections.abc import Iterator

import boa
import pytest
from contract_kit import Blueprints, System, deploy


@pytest.fixture(scope="session")
def blueprints() -> Blueprints:
    return Blueprints.compile()


@pytest.fixture(autouse=True)
def _fresh_chain() -> Iterator[None]:
    # Every test starts from the same chain state and leaves nothing behind.
    with boa.env.anchor():
        yield


@pytest.fixture
def system(blueprints: Blueprints) -> System:
    return deploy(blueprints)
