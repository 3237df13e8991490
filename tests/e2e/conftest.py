"""Fixtures for end-to-end tests (helpers in support/live_network.py and
support/audited_network.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from support.audited_network import AuditedNetwork, start_audited_network
from support.impostor_model import ensure_impostor_model
from support.live_network import LiveNetwork, start_network
from support.verified_network import ledger_check


@pytest.fixture(scope="session")
def live_network(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[LiveNetwork]:
    live = start_network(tmp_path_factory.mktemp("network"), tiny_model_dir)
    try:
        yield live
    finally:
        live.network.stop()
    checked = ledger_check(live.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def network(tmp_path: Path, tiny_model_dir: Path) -> Iterator[LiveNetwork]:
    """A network of its own, for tests that kill or restart its processes. Its providers
    serve the tiny text model only: no test of one uses embeddings, which would cost each
    provider about 2 s of CPU more at start."""
    live = start_network(tmp_path, tiny_model_dir, embeddings=False)
    try:
        yield live
    finally:
        live.network.stop()
    checked = ledger_check(live.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def client(live_network: LiveNetwork) -> Iterator[OpenAI]:
    with live_network.client(timeout=120) as openai_client:
        yield openai_client


@pytest.fixture(scope="session")
def audited_network(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Iterator[AuditedNetwork]:
    """The audit tests' network, started once for test_honest_audits.py and
    test_adversarial.py. Stopped at the end, its journal must still check out."""
    impostor_dir = ensure_impostor_model()
    root = tmp_path_factory.mktemp("audited")
    net = start_audited_network(root / "network", tiny_model_dir, impostor_dir, tiny_catalog)
    try:
        yield net
    finally:
        net.live.network.stop()
    checked = ledger_check(net.live.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
