"""A streamed chunk spliced into its stream's envelope is byte for byte the one encoded
from a dict, for every kind of text, choice and option."""

from __future__ import annotations

import json

import pytest

from tessera.gateway.openai_format import ChatChunks, CompletionChunks, sse
from tessera.protocol.wire import Chunk, TokenLogprob

TEXTS = [
    "hi",
    " world",
    'say "quoted" \\ back',
    "line\nbreak\ttab",
    "ünïcødé ✓ 🚀",
    "\x00\x1f",
    "}]{",
]


def _chunk(text: str, index: int = 0, finish: str | None = None, logprobs: bool = False) -> Chunk:
    entries = (
        [TokenLogprob(token=text or "x", token_id=7, logprob=-0.5, top_logprobs=[])]
        if logprobs
        else []
    )
    return Chunk(
        job_id="j" * 16, index=index, text=text, tokens=1, finish_reason=finish, logprobs=entries
    )


@pytest.mark.parametrize("kind", [ChatChunks, CompletionChunks])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("top_n", [None, 2])
def test_spliced_events_equal_encoded_ones(
    kind: type[ChatChunks | CompletionChunks], include_usage: bool, top_n: int | None
) -> None:
    fast = kind("req_abc", 'model "x"', include_usage, top_n)
    slow = kind("req_abc", 'model "x"', include_usage, top_n)
    slow.created = fast.created
    chunks = [_chunk(t, index=i % 2, logprobs=top_n is not None) for i, t in enumerate(TEXTS)]
    chunks += [
        _chunk("", index=0),
        _chunk("end", index=1, finish="stop", logprobs=top_n is not None),
    ]
    for chunk in chunks:
        got, want = fast.event(chunk), sse(slow.content(chunk))
        assert got == want
        assert json.loads(got.decode()[len("data: ") :])  # still one JSON object


def test_completion_offsets_advance_through_spliced_events() -> None:
    chunks = CompletionChunks("req_abc", "m", False, None)
    for text in TEXTS:
        chunks.event(_chunk(text))
    logged = CompletionChunks("req_abc", "m", False, 1)
    logged._offsets = dict(chunks._offsets)
    body = logged.content(_chunk("next", logprobs=True))
    assert body["choices"][0]["logprobs"]["text_offset"] == [sum(len(t) for t in TEXTS)]
