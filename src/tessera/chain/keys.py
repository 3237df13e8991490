"""An Ethereum (secp256k1) key in a file only its owner reads: a wallet's or a gateway's.

Two formats, told apart by content: an eth-account JSON keystore (encrypted with a
password, scrypt) or a plain file holding the 32-byte key as hex (for dev chains and
hot keys a service loads unattended). Either is written 0600, atomically, and never over
an existing file; a plain file that others can read is refused, like the provider's
Ed25519 key file (:mod:`tessera.key_file`).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from tessera.config import default_data_dir
from tessera.errors import ConfigError
from tessera.private_files import write_private

PASSWORD_ENV = "TESSERA_WALLET_PASSWORD"


def default_key_path() -> Path:
    """Where ``tessera wallet`` keeps its key unless told otherwise (beside provider.key)."""
    return default_data_dir() / "wallet.key"


@dataclass(frozen=True, slots=True)
class EthKey:
    """A loaded key. ``repr`` shows the address only."""

    address: str
    private_key: bytes = field(repr=False)

    @property
    def account(self) -> LocalAccount:
        return Account.from_key(self.private_key)

    @classmethod
    def from_hex(cls, text: str) -> EthKey:
        try:
            account = Account.from_key(_parse_hex_key(text))
        except ValueError as exc:
            raise ConfigError(f"not a private key: {exc}") from exc
        return cls(account.address, bytes(account.key))

    @classmethod
    def generate(cls) -> EthKey:
        return cls.from_hex(secrets.token_hex(32))


def create_key_file(path: Path, password: str | None = None) -> EthKey:
    """Create a new random key at ``path`` (a keystore if ``password`` is given)."""
    key = EthKey.generate()
    write_key_file(path, key, password)
    return key


def import_key_file(path: Path, private_key_hex: str, password: str | None = None) -> EthKey:
    """Save an existing private key (hex) at ``path``."""
    key = EthKey.from_hex(private_key_hex)
    write_key_file(path, key, password)
    return key


def write_key_file(path: Path, key: EthKey, password: str | None = None) -> None:
    """Write ``key`` 0600 at ``path``; ConfigError if a file is already there."""
    path = Path(path).expanduser()
    if path.exists():
        raise ConfigError(
            f"{path} already exists; it is never overwritten: move it away or pass another --key"
        )
    if password is not None:
        text = json.dumps(Account.encrypt(key.private_key, password))
    else:
        text = key.private_key.hex()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write_private(tmp, text + "\n")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # link(2) fails if the name exists: a racing writer never overwrites a key.
        os.link(tmp, path)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists; it is never overwritten") from exc
    finally:
        tmp.unlink(missing_ok=True)


def load_key_file(path: Path, password: str | None = None) -> EthKey:
    """Load a keystore (needs ``password``) or a plain hex key file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text().strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no key file at {path}: create one with `tessera wallet create --key {path}`"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc}") from exc
    if text.startswith("{"):
        return _load_keystore(path, text, password)
    if mode & 0o077:
        raise ConfigError(
            f"key {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` "
            "and start again (and move funds to a new key if others could have copied it)"
        )
    try:
        return EthKey.from_hex(text)
    except ConfigError as exc:
        raise ConfigError(
            f"{path} is neither a JSON keystore nor a 64-hex-digit private key"
        ) from exc


def is_keystore(path: Path) -> bool:
    try:
        return Path(path).expanduser().read_text().lstrip().startswith("{")
    except OSError:
        return False


def _load_keystore(path: Path, text: str, password: str | None) -> EthKey:
    if password is None:
        raise ConfigError(
            f"{path} is an encrypted keystore: give its password (--password, or ${PASSWORD_ENV})"
        )
    try:
        keystore = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    try:
        private_key = Account.decrypt(keystore, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise ConfigError(f"wrong password for {path}") from exc
        raise ConfigError(f"{path} is not a keystore eth-account can read: {exc}") from exc
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a keystore eth-account can read") from exc
    return EthKey.from_hex(bytes(private_key).hex())


def _parse_hex_key(text: str) -> bytes:
    cleaned = text.strip().removeprefix("0x").removeprefix("0X")
    raw = bytes.fromhex(cleaned)
    if len(raw) != 32:
        raise ValueError("a private key is 32 bytes (64 hex digits)")
    return raw
