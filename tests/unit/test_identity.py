import os
import stat
from pathlib import Path

import pytest

from tessera.errors import ConfigError
from tessera.provider.identity import load_or_create_key


def test_key_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "provider.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path).encode() == key.encode()


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "provider.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_key(path)


def test_corrupt_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "provider.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not hex")
    os.close(fd)
    with pytest.raises(ConfigError):
        load_or_create_key(path)
