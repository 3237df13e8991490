"""The agent's outbox: frames in order, text ready at once merged, failures passed on."""

from __future__ import annotations

import asyncio
import json

import pytest

from tessera.protocol.receipts import OutputDigest
from tessera.protocol.wire import Chunk, Heartbeat
from tessera.provider.outbox import MAX_MERGED_TOKENS, Outbox, merged


def chunk(text: str, ids: list[int], **extra: object) -> Chunk:
    return Chunk(
        job_id="job-1",
        text=text,
        tokens=len(ids),
        token_ids=ids,
        token_logprobs=[-0.5] * len(ids),
        **extra,  # type: ignore[arg-type]
    )


class Wire:
    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    async def write(self, text: str) -> None:
        self.frames.append(json.loads(text))
        await asyncio.sleep(0)


async def test_chunks_queued_in_one_turn_leave_as_one_and_finishes_stay_apart() -> None:
    wire = Wire()
    outbox = Outbox(wire.write)
    parts = [chunk("The", [1], prompt_tokens=5), chunk(" quick", [2]), chunk(" fox", [3])]
    for part in parts:
        await outbox.send(part)
    await outbox.send(Chunk(job_id="job-1", finish_reason="length"))
    await outbox.flush()
    assert [f["text"] for f in wire.frames] == ["The quick fox", ""]
    first = wire.frames[0]
    assert (first["tokens"], first["token_ids"], first["prompt_tokens"]) == (3, [1, 2, 3], 5)
    assert wire.frames[1]["finish_reason"] == "length"
    # What a receipt signs is the same whichever way the text was cut.
    one, many = OutputDigest(), OutputDigest()
    for part in parts:
        many.add(part)
    one.add(Chunk.model_validate(first))
    assert one.sha256() == many.sha256()
    await outbox.close()


async def test_a_token_that_arrives_alone_leaves_at_once() -> None:
    wire = Wire()
    outbox = Outbox(wire.write)
    await outbox.send(chunk("a", [1]))
    await asyncio.sleep(0.01)  # the producer waits for its next token
    await outbox.send(chunk("b", [2]))
    await outbox.flush()
    assert [f["text"] for f in wire.frames] == ["a", "b"]
    await outbox.close()


def test_chunks_of_other_jobs_choices_or_past_the_bounds_are_never_merged() -> None:
    base = chunk("a", [1])
    assert merged(base, chunk("b", [2])) is not None
    assert merged(base, Chunk(job_id="job-2", text="b", tokens=1)) is None
    assert merged(base, Chunk(job_id="job-1", index=1, text="b", tokens=1)) is None
    assert merged(base, Chunk(job_id="job-1", finish_reason="stop", eos=True)) is None
    big = Chunk(job_id="job-1", text="x", tokens=MAX_MERGED_TOKENS)
    assert merged(base, big) is None


async def test_other_frames_keep_their_place_between_chunks() -> None:
    wire = Wire()
    outbox = Outbox(wire.write)
    await outbox.send(chunk("a", [1]))
    await outbox.send(Heartbeat(active_jobs=1))
    await outbox.send(chunk("b", [2]))
    await outbox.flush()
    assert [f["type"] for f in wire.frames] == ["chunk", "heartbeat", "chunk"]
    await outbox.close()


async def test_a_closed_connection_fails_the_next_send() -> None:
    async def broken(text: str) -> None:
        raise ConnectionResetError("gone")

    outbox = Outbox(broken)
    await outbox.send(chunk("a", [1]))
    await outbox.flush()  # returns: the writer stopped
    with pytest.raises(ConnectionResetError):
        await outbox.send(chunk("b", [2]))
    await outbox.close()
