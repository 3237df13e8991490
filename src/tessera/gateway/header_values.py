"""HTTP header values built from anything a client or provider chose.

A header value may only hold visible ASCII and spaces: a CR, LF or NUL lets a value
split the response (the server refuses to send it), and a character outside Latin-1
cannot be encoded at all. Model names, routing explanations and provider labels can carry
any of these, so every such value goes through ``header_value``: it percent-encodes
``%`` and every byte outside 0x20-0x7E of the UTF-8 text, which keeps plain values as they
are and makes the rest reversible with ``urllib.parse.unquote``.
"""

from __future__ import annotations

MAX_HEADER_VALUE_CHARS = 2_000

_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}


def header_value(text: str, limit: int = MAX_HEADER_VALUE_CHARS) -> str:
    """``text`` made safe to send as one header value, at most ``limit`` characters.

    The cut never splits a character's escapes, so what is kept always decodes.
    """
    if len(text) <= limit and text.isascii() and text.isprintable() and "%" not in text:
        return text.strip(" ")  # the common case, without a loop over every character
    out: list[str] = []
    size = 0
    for char in text:
        data = char.encode("utf-8", errors="replace")  # a lone surrogate becomes "?"
        piece = "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in data)
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out).strip(" ")
