"""One anvil node and deployment for the whole chain suite (see support/chain.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.chain import Chain, running_chain


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with running_chain(tmp_path_factory.mktemp("chain")) as running:
        yield running
