"""Providers that announce things to win work or to spoil it for others (issue 11).

Scripted peers with real keys drive an in-process gateway: an offer that disagrees with
the other providers of its name (finding 9); a declared region, label or no-retention
promise, and id prefixes short enough to grind (finding 10).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from pathlib import Path
from typing import Any

import pytest

from tessera.protocol.wire import (
    ModelOffer,
)

from support.announced_peers import first_job, join, text_offer
from support.scripted_peers import (
    WEIGHTS,
    LiveGateway,
    Peer,
    answer,
    chat_body,
    done_frame,
    live_gateway,
    wait_providers,
)

pytestmark = pytest.mark.integration

EMBED = "minilm-scripted"


def embedding_offer(dims: int = 4) -> ModelOffer:
    return ModelOffer(
        name=EMBED,
        weights_sha256=WEIGHTS,
        kind="embedding",
        context_length=256,
        embedding_dimensions=dims,
    )


async def answer_embedding(peer: Peer, job: dict[str, Any], dims: int) -> None:
    vectors = [
        base64.b64encode(struct.pack(f"<{dims}f", *([0.5] * dims))).decode() for _ in job["inputs"]
    ]
    done = done_frame(peer, job, [], (3, 0))
    done["embeddings_b64"] = vectors
    # The receipt commits to the vectors: re-sign it over them.
    from tessera.protocol.receipts import embeddings_sha256, sign_receipt
    from tessera.protocol.wire import Receipt

    receipt = Receipt.model_validate(
        {**done["receipt"], "output_sha256": embeddings_sha256(vectors)}
    )
    done["receipt"] = receipt.model_dump(mode="json")
    done["receipt_signature"] = sign_receipt(peer.key, receipt)
    await peer.send(done)


async def test_a_provider_announcing_an_embedding_model_as_text_spoils_nothing(
    gateway: LiveGateway,
) -> None:
    liar, liar_beat = await join(
        gateway, ModelOffer(name=EMBED, weights_sha256=WEIGHTS, kind="text", context_length=8)
    )
    honest = [await join(gateway, embedding_offer()) for _ in range(3)]
    await wait_providers(gateway, 4)
    async with gateway.client() as client:
        models = (await client.get("/v1/models")).json()["data"]
        [listed] = [m for m in models if m["id"] == EMBED]
        assert (listed["kind"], listed["embedding_dimensions"]) == ("embedding", 4)
        assert listed["providers"] == 3
        for _ in range(3):
            request = asyncio.create_task(
                client.post("/v1/embeddings", json={"model": EMBED, "input": ["hello"]})
            )
            peer, job = await first_job([peer for peer, _ in honest])
            await answer_embedding(peer, job, 4)
            response = await request
            assert response.status_code == 200, response.text
            assert len(response.json()["data"][0]["embedding"]) == 4
        status = (await client.get(f"/v1/providers/{liar.provider_id}/status")).json()
        reasons = " ".join(status["models"][0]["reasons"])
        assert "most providers" in reasons and "embedding" in reasons
    liar_beat.cancel()
    for _, beat in honest:
        beat.cancel()


async def test_a_declared_region_the_round_trip_contradicts_wins_no_region_request(
    gateway_dir: Path,
) -> None:
    # This gateway says it stands in Sydney; the peers dial in over loopback (a few ms),
    # so a peer declaring Germany is contradicted and one declaring Australia is not.
    async with live_gateway(gateway_dir, location_lat_deg=-33.9, location_lon_deg=151.2) as gw:
        liar, liar_beat = await join(
            gw, text_offer(), region="DE-eu", no_retention=True, label="Acme GPU"
        )
        local, local_beat = await join(gw, text_offer(), region="AU", label="acme gpu")
        await wait_providers(gw, 2)
        async with gw.client() as client:
            view = (await client.get(f"/v1/providers/{liar.provider_id}")).json()
            region = view["attributes"]["region"]
            assert (region["value"], region["check"]) == ("DE-eu", "contradicted")
            assert region["rtt_ms"] is not None
            assert view["attributes"]["no_retention"]["check"] == "unchecked"
            assert view["attributes"]["label"]["check"] == "duplicate"
            status = (await client.get(f"/v1/providers/{local.provider_id}/status")).json()
            assert status["attributes"]["region"]["check"] == "consistent"
            assert status["attributes"]["label"]["shared_with"] == 1

            eu = {"regions_allow": ["eu"], "data_collection": "deny"}
            refused = await client.post("/v1/chat/completions", json=chat_body(provider=eu))
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == "provider.regions_allow"

            request = asyncio.create_task(
                client.post(
                    "/v1/chat/completions", json=chat_body(provider={"regions_allow": ["oceania"]})
                )
            )
            job = await local.recv()
            await answer(local, job)
            response = await request
            assert response.status_code == 200, response.text
            assert response.headers["x-tessera-provider"] == local.provider_id
        liar_beat.cancel()
        local_beat.cancel()


@pytest.mark.parametrize("field", ["order", "only", "ignore"])
async def test_an_8_character_id_prefix_is_refused(gateway: LiveGateway, field: str) -> None:
    peer, beat = await join(gateway, text_offer())
    async with gateway.client() as client:
        short = {field: [peer.provider_id[:8]]}
        response = await client.post("/v1/chat/completions", json=chat_body(provider=short))
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == f"provider.{field}"
        assert "16" in error["message"]
    beat.cancel()
