"""Providers that announce things to win work or to spoil it for others (issue 11).

Scripted peers with real keys drive an in-process gateway: an offer that disagrees with
the other providers of its name (finding 9).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

import pytest

from tessera.protocol.wire import (
    ModelOffer,
)

from support.announced_peers import first_job, join
from support.scripted_peers import WEIGHTS, LiveGateway, Peer, done_frame, wait_providers

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
