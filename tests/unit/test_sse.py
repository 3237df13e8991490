"""The incremental SSE decoder used to read OpenAI-compatible upstream streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.provider.backends.sse import SSEDecoder, SSEError, SSEEvent, aiter_sse


def decode(*pieces: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.flush())
    return events


def datas(*pieces: bytes) -> list[str]:
    return [e.data for e in decode(*pieces)]


def test_openai_style_stream() -> None:
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert datas(stream) == ['{"a": 1}', '{"b": 2}', "[DONE]"]


def test_multi_line_data_joins_with_newline() -> None:
    assert datas(b"data: first\ndata: second\ndata:third\n\n") == ["first\nsecond\nthird"]


def test_only_one_leading_space_is_dropped() -> None:
    assert datas(b"data:  two spaces\n\n") == [" two spaces"]


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": keep-alive\n\ndata: x\n: inside\nretry: 10\nfoo: bar\n\n:tail\n\n"
    assert datas(stream) == ["x"]


def test_event_name_and_id() -> None:
    events = decode(b"event: error\nid: 7\ndata: boom\n\ndata: next\n\n")
    assert events[0] == SSEEvent(data="boom", event="error", id="7")
    # The event name resets per event; the last id persists, as the spec says.
    assert events[1] == SSEEvent(data="next", event="message", id="7")


def test_events_without_data_are_not_dispatched() -> None:
    assert datas(b"event: ping\n\n\n\ndata: real\n\n") == ["real"]


def test_empty_data_line_is_an_event() -> None:
    assert datas(b"data\n\n") == [""]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = b"data: a" + newline + b"data: b" + newline + newline + b"data: c" + newline * 2
    assert datas(stream) == ["a\nb", "c"]


def test_crlf_split_between_pieces_is_one_line_end() -> None:
    assert datas(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == ["a", "b"]


def test_lone_cr_at_a_piece_end_is_resolved_by_the_next_piece() -> None:
    assert datas(b"data: a\r", b"\r", b"data: b\r\r") == ["a", "b"]


def test_utf8_character_split_between_pieces() -> None:
    raw = "data: héllo 世界\n\n".encode()
    cut = raw.index("世".encode()) + 1
    assert datas(raw[:cut], raw[cut:]) == ["héllo 世界"]


def test_leading_byte_order_mark_is_ignored() -> None:
    raw = "\ufeffdata: x\n\n".encode()
    assert datas(raw[:2], raw[2:]) == ["x"]


def test_incomplete_trailing_event_is_dropped() -> None:
    assert datas(b"data: done\n\ndata: cut off") == ["done"]
    assert datas(b"data: done\n\ndata: cut off\n") == ["done"]


def test_events_are_returned_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert [e.data for e in decoder.feed(b"\ndata: tw")] == ["one"]
    assert [e.data for e in decoder.feed(b"o\n\n")] == ["two"]


def test_over_long_line_or_event_raises() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"x" * 200)
    decoder = SSEDecoder(max_event_chars=100)
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"y" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")


async def test_aiter_sse_reads_an_async_byte_stream() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"data: {", b'"k": 1}\n', b"\ndata: [DO", b"NE]\n\n"):
            yield piece

    assert [e.data async for e in aiter_sse(pieces())] == ['{"k": 1}', "[DONE]"]


_lines = st.lists(
    st.one_of(
        st.text(
            alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
            max_size=12,
        ).map(lambda t: "data: " + t),
        st.just(""),
        st.just(": comment"),
        st.just("event: e"),
    ),
    max_size=20,
)


@given(lines=_lines, newline=st.sampled_from(["\n", "\r\n", "\r"]), cuts=st.data())
def test_any_split_gives_the_same_events(
    lines: list[str], newline: str, cuts: st.DataObject
) -> None:
    raw = (newline.join(lines) + newline * 2).encode()
    points = sorted(cuts.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert decode(*pieces) == decode(raw)
