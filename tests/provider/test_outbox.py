"""The agent's outbox: frames in order, text ready at once merged, failures passed on."""

from __future__ import annotations

import asyncio
import json

import pytest

from tessera.protocol.receipts import OutputDigest
from tessera.protocol.wire import Chunk, Heartbeat, frames_of, provider_frame_adapter
from tessera.provider import outbox as outbox_module
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
        self.messages: list[str] = []

    async def write(self, text: str) -> None:
        self.messages.append(text)
        self.frames.extend(json.loads(line) for line in frames_of(text))
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


async def test_frames_of_many_jobs_ready_together_leave_as_one_message() -> None:
    wire = Wire()
    outbox = Outbox(wire.write)
    for job in range(5):
        await outbox.send(Chunk(job_id=f"job-{job}", text=f"t{job}", tokens=1, token_ids=[job]))
    await outbox.send(Heartbeat(active_jobs=5))
    await outbox.flush()
    assert len(wire.messages) == 1
    lines = frames_of(wire.messages[0])
    assert [provider_frame_adapter.validate_json(x).type for x in lines] == ["chunk"] * 5 + [
        "heartbeat"
    ]
    assert [f.get("job_id") for f in wire.frames[:5]] == [f"job-{j}" for j in range(5)]
    await outbox.close()


async def test_a_batch_stops_at_its_byte_bound_and_a_big_frame_goes_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "MAX_BATCH_BYTES", 200)
    wire = Wire()
    outbox = Outbox(wire.write)
    small = [Chunk(job_id=f"job-{j}", text="x", tokens=1) for j in range(6)]
    big = Chunk(job_id="job-big", text="y" * 500, tokens=1)
    for frame in [*small[:3], big, *small[3:]]:
        await outbox.send(frame)
    await outbox.flush()
    assert all(len(m) <= 200 or "\n" not in m for m in wire.messages)
    assert any(frames_of(m) == [big.model_dump_json()] for m in wire.messages)
    assert [f["job_id"] for f in wire.frames] == [
        *(f"job-{j}" for j in range(3)),
        "job-big",
        *(f"job-{j}" for j in range(3, 6)),
    ]
    await outbox.close()
