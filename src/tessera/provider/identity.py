"""The provider's Ed25519 identity: see :mod:`tessera.key_file`."""

from __future__ import annotations

from tessera.key_file import load_or_create_key

__all__ = ["load_or_create_key"]
