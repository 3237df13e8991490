"""Fixtures for end-to-end tests (helpers in support/live_network.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from support.live_network import LiveNetwork, start_network


@pytest.fixture(scope="session")
def live_network(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[LiveNetwork]:
    live = start_network(tmp_path_factory.mktemp("network"), tiny_model_dir)
    try:
        yield live
    finally:
        live.network.stop()


@pytest.fixture
def network(tmp_path: Path, tiny_model_dir: Path) -> Iterator[LiveNetwork]:
    """A network of its own, for tests that kill or restart its processes."""
    live = start_network(tmp_path, tiny_model_dir)
    try:
        yield live
    finally:
        live.network.stop()


@pytest.fixture
def client(live_network: LiveNetwork) -> Iterator[OpenAI]:
    with live_network.client(timeout=120) as openai_client:
        yield openai_client
