"""An Ed25519 identity (a provider's or a gateway's), kept in a key file only its owner reads.

The file holds the 32-byte seed as hex. It is created on first run with mode 0600; an
existing file that others can read is refused, because anyone who reads it can serve
(and be slashed, or countersign receipts) as its owner.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from tessera.errors import ConfigError


def load_or_create_key(path: Path, what: str = "provider") -> SigningKey:
    """Load the key at ``path``, creating it (mode 0600) if it does not exist."""
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = SigningKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.encode().hex() + "\n")
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} key {path} is readable by others (mode {mode:o}); "
            f"run `chmod 600 {path}` and start again"
        )
    text = path.read_text().strip()
    try:
        seed = bytes.fromhex(text)
        if len(seed) != 32:
            raise ValueError("seed must be 32 bytes")
        return SigningKey(seed)
    except ValueError as exc:
        raise ConfigError(
            f"{what} key {path} is not a 64-hex-digit Ed25519 seed; move it away to create "
            "a new identity"
        ) from exc
