"""Canonical JSON: the exact bytes that get signed and hashed.

Keys sorted, no insignificant whitespace, UTF-8, and no floats that are not finite.
Two parties that build the same object get the same bytes, so a signature made by one
verifies for the other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_bytes(obj: Any) -> bytes:
    """Encode ``obj`` deterministically; raises ValueError on NaN or infinity."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    """Hex SHA-256 of bytes, or of a string's UTF-8 encoding."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()
