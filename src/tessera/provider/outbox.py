"""Frames to the gateway, in order, with text that is ready at once sent as one chunk.

An upstream (or the local model) often hands over several tokens in one read: vLLM
flushes a burst of SSE events, a short answer arrives whole. Sent one frame per token,
each costs both ends a JSON encoding, a WebSocket frame and a validation. The outbox
keeps the frames a job queued in the same turn of the event loop and merges consecutive
text chunks of the same choice before one writer task sends them; a token that arrives
alone still leaves at once, since the writer runs as soon as the producer yields.

The writer then sends everything queued as one WebSocket message, a frame per line (up to
``MAX_BATCH_BYTES``): with many jobs streaming at once, frames of different jobs that are
ready in the same turn share one message, and the gateway reads one message for them all.

Merging changes no content: a receipt's output digest is over the choice's text, token
ids and log-probs, not over chunk boundaries. A finishing chunk is never merged, so a
choice's last frame stays its own (a consumer who cancels pays for tokens, not frames).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from tessera.protocol.wire import Chunk, Frame, batch_text

MAX_MERGED_TOKENS = 10_000  # the wire's bound on a chunk's token lists
MAX_MERGED_TEXT = 1_000_000  # and on its text
MAX_QUEUED = 256  # frames waiting before a producer waits for the writer
MAX_BATCH_BYTES = 1 << 20  # one message's frames (a larger frame still goes, alone)


def merged(first: Chunk, second: Chunk) -> Chunk | None:
    """``first`` followed by ``second`` as one chunk, or None if they must stay apart."""
    if (
        first.job_id != second.job_id
        or first.index != second.index
        or first.finish_reason is not None
        or second.finish_reason is not None
        or first.eos
        or second.eos
        or first.tokens + second.tokens > MAX_MERGED_TOKENS
        or len(first.token_ids) + len(second.token_ids) > MAX_MERGED_TOKENS
        or len(first.logprobs) + len(second.logprobs) > MAX_MERGED_TOKENS
        or len(first.text) + len(second.text) > MAX_MERGED_TEXT
    ):
        return None
    # Both parts were validated when built; the bounds of the sum are checked above.
    return Chunk.model_construct(
        job_id=first.job_id,
        index=first.index,
        text=first.text + second.text,
        logprobs=[*first.logprobs, *second.logprobs],
        tokens=first.tokens + second.tokens,
        prompt_tokens=first.prompt_tokens
        if first.prompt_tokens is not None
        else second.prompt_tokens,
        token_ids=[*first.token_ids, *second.token_ids],
        token_logprobs=[*first.token_logprobs, *second.token_logprobs],
    )


class Outbox:
    """One connection's outgoing frames: ``send`` queues, one writer task writes."""

    def __init__(self, write: Callable[[str], Awaitable[None]]) -> None:
        self._write = write
        self._queue: deque[Frame] = deque()
        self._ready = asyncio.Event()  # frames are queued
        self._room = asyncio.Event()  # fewer than MAX_QUEUED are
        self._room.set()
        self._drained = asyncio.Event()  # nothing queued or being written
        self._drained.set()
        self._failure: BaseException | None = None
        self._writer = asyncio.create_task(self._run(), name="outbox-writer")

    async def send(self, frame: Frame) -> None:
        """Queue ``frame`` (merged into the last queued chunk where it can be); raises
        what stopped the writer (the connection closed) if it has stopped."""
        if self._failure is not None:
            raise self._failure
        queue = self._queue
        if queue and isinstance(frame, Chunk):
            last = queue[-1]
            if isinstance(last, Chunk) and (both := merged(last, frame)) is not None:
                queue[-1] = both
                return
        queue.append(frame)
        self._drained.clear()
        self._ready.set()
        if len(queue) >= MAX_QUEUED:
            self._room.clear()
            await self._room.wait()
            if self._failure is not None:
                raise self._failure

    async def _run(self) -> None:
        queue = self._queue
        try:
            carried: str | None = None  # encoded, but too big for the last batch
            while True:
                await self._ready.wait()
                while queue or carried is not None:
                    batch = [] if carried is None else [carried]
                    size = 0 if carried is None else len(carried)
                    carried = None
                    while queue:
                        text = queue.popleft().model_dump_json()
                        if batch and size + len(text) > MAX_BATCH_BYTES:
                            carried = text
                            break
                        batch.append(text)
                        size += len(text) + 1
                    if len(queue) < MAX_QUEUED:
                        self._room.set()
                    await self._write(batch_text(batch))
                self._ready.clear()
                self._drained.set()
        except Exception as exc:
            self._failure = exc
            queue.clear()
            self._room.set()
            self._drained.set()

    async def flush(self) -> None:
        """Wait until every queued frame was written (or the writer stopped)."""
        await self._drained.wait()

    async def close(self) -> None:
        """Stop the writer; frames still queued are dropped (the connection is ending)."""
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
