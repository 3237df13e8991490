"""Fixtures for the hub tests: an in-process gateway (helpers in support/scripted_peers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.scripted_peers import LiveGateway, live_gateway


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[LiveGateway]:
    async with live_gateway(tmp_path) as gw:
        yield gw
