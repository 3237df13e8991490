"""An incremental Server-Sent Events decoder (the WHATWG event-stream format).

Feed it bytes as they arrive from the network, in pieces of any size; it returns every
event completed so far. It follows the spec where it matters for OpenAI-style streams:
lines end in LF, CRLF or CR (a CRLF may be split across pieces, and so may a UTF-8
character); ``:`` starts a comment; several ``data:`` lines join with ``\\n``; one space
after the colon is dropped; a blank line dispatches; an event with no data is dropped;
a leading byte-order mark is ignored. ``[DONE]`` is not special here: it arrives as an
event whose data is ``"[DONE]"`` and the caller decides what it means.

A line or event longer than ``max_event_chars`` raises SSEError, so a broken or hostile
upstream cannot grow our memory without bound.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

DEFAULT_MAX_EVENT_CHARS = 16 * 1024 * 1024


class SSEError(ValueError):
    """The byte stream is not a usable event stream."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Turns network pieces into events; one decoder per stream, not thread-safe."""

    def __init__(self, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS) -> None:
        self._max = max_event_chars
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last complete line
        self._started = False
        self._data: list[str] = []
        self._data_chars = 0
        self._event = ""
        self._last_id: str | None = None

    def feed(self, piece: bytes) -> list[SSEEvent]:
        """Decode one network piece; return the events it completed, in order."""
        text = self._pending + self._utf8.decode(piece)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return self._consume(text, final=False)

    def flush(self) -> list[SSEEvent]:
        """End of stream: finish the last line. A trailing event with no blank line after
        it is incomplete and, as the spec says, dropped."""
        text = self._pending + self._utf8.decode(b"", final=True)
        events = self._consume(text + "\n", final=True) if text else []
        self._data, self._data_chars, self._event = [], 0, ""
        return events

    def _consume(self, text: str, *, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        start = 0
        length = len(text)
        while True:
            end = _next_line_end(text, start)
            if end < 0:
                break
            if text[end] == "\r" and end + 1 == length and not final:
                break  # maybe the first half of a CRLF split across pieces
            line = text[start:end]
            start = end + 2 if text.startswith("\r\n", end) else end + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._pending = text[start:]
        if len(self._pending) > self._max:
            raise SSEError(f"event stream line longer than {self._max} characters")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_chars += len(value) + 1
            if self._data_chars > self._max:
                raise SSEError(f"event stream event longer than {self._max} characters")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        # "retry" and unknown fields are ignored, as the spec says.
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(
            data="\n".join(self._data), event=self._event or "message", id=self._last_id
        )
        self._data, self._data_chars, self._event = [], 0, ""
        return event


def _next_line_end(text: str, start: int) -> int:
    lf = text.find("\n", start)
    cr = text.find("\r", start, lf if lf >= 0 else len(text))
    return cr if cr >= 0 else lf


async def aiter_sse(
    pieces: AsyncIterable[bytes], max_event_chars: int = DEFAULT_MAX_EVENT_CHARS
) -> AsyncIterator[SSEEvent]:
    """Events from an async byte stream (for example ``httpx.Response.aiter_raw()``)."""
    decoder = SSEDecoder(max_event_chars)
    async for piece in pieces:
        for event in decoder.feed(piece):
            yield event
    for event in decoder.flush():
        yield event
