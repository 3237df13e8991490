"""The provider agent keeps the newest cheque each gateway signed for it, and only that:
a lower or garbled one never replaces what it holds, and nothing is written for a gateway
without a chain."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.chain.keys import EthKey
from tessera.chain.typed_data import SignedCheque, sign_cheque
from tessera.errors import InvalidRequest
from tessera.provider.cheques import ChequeKeeper

VAULT = "0x" + "11" * 20
PROVIDER_ACCOUNT = "0x" + "22" * 20
PROVIDER_ID = "ab" * 32
GATEWAY = EthKey.generate()


def cheque(cumulative: int) -> dict[str, Any]:
    signed = sign_cheque(
        GATEWAY.private_key, 31337, VAULT, GATEWAY.address, PROVIDER_ACCOUNT, cumulative
    )
    return {"object": "cheque", "provider_id": PROVIDER_ID, **signed.to_json()}


class Gateway:
    """What the gateway's cheque endpoint answers, one response at a time."""

    def __init__(self) -> None:
        self.status = 200
        self.body: dict[str, Any] = {}
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return httpx.Response(self.status, json=self.body)


async def test_keeps_the_highest_cheque_and_refuses_garbage(tmp_path: Path) -> None:
    gateway = Gateway()
    keeper = ChequeKeeper(PROVIDER_ID, ["http://127.0.0.1:8000/"], tmp_path / "cheques", 60)
    url = keeper.gateway_urls[0]
    async with httpx.AsyncClient(transport=httpx.MockTransport(gateway)) as client:
        gateway.status, gateway.body = 503, {"error": {"code": "chain_unavailable"}}
        assert not await keeper.fetch(url, client)
        assert not (tmp_path / "cheques").exists()

        gateway.status, gateway.body = 200, cheque(500)
        assert await keeper.fetch(url, client)
        path = keeper.path_for(url)
        assert path.name == f"127.0.0.1_8000-{PROVIDER_ID[:16]}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert SignedCheque.load(path).cumulative == 500
        assert SignedCheque.load(path).signer() == GATEWAY.address

        gateway.body = cheque(400)  # lower: what it holds already pays more
        assert not await keeper.fetch(url, client)
        assert SignedCheque.load(path).cumulative == 500

        garbled = cheque(900) | {"signature": "0x" + "00" * 65}
        gateway.body = garbled
        with pytest.raises(InvalidRequest, match="signature"):
            await keeper.fetch(url, client)
        assert SignedCheque.load(path).cumulative == 500

        gateway.body = cheque(900)
        assert await keeper.fetch(url, client)
        assert SignedCheque.load(path).cumulative == 900
    assert gateway.paths[-1] == f"/v1/providers/{PROVIDER_ID}/cheque"
    assert [p.name for p in (tmp_path / "cheques").iterdir()] == [path.name]
