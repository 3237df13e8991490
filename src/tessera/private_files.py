"""Files only their owner may read: a data directory 0700, every file in it 0600.

A data directory holds what a stranger must never read: the gateway's signing key and
providers' keys, the database (API key hashes, the ledger) with its WAL, logs, and the
demo's plaintext API key in ``demo.json``. The gateway, provider and demo commands call
:func:`restrict_new_files` first, so nothing they or their children create is open to
others; :func:`secure_data_dir` then closes what an older version or a hand left open.

Key files are the exception: a key others could read may already have been copied, so it
is never tightened quietly; :mod:`tessera.key_file` refuses it and says how to fix it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
KEY_SUFFIX = ".key"


def restrict_new_files() -> None:
    """From now on this process (and every child it starts) creates files 0600 and
    directories 0700."""
    os.umask(PRIVATE_UMASK)


def secure_data_dir(path: Path) -> list[Path]:
    """Create ``path`` 0700, or take group and other access off it and everything under
    it (key files excepted, symlinks not followed), logging each change. Returns the
    paths changed."""
    path = path.expanduser()
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    changed = []
    if _tighten(path):
        changed.append(path)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            child = Path(root) / name
            if not name.endswith(KEY_SUFFIX) and _tighten(child):
                changed.append(child)
    return changed


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, whatever the umask or the
    mode of a file already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE_MODE)
        handle.write(text)


def _tighten(path: Path) -> bool:
    """Take group and other bits off ``path`` (a directory or a regular file)."""
    try:
        info = path.lstat()
    except FileNotFoundError:  # gone while we walked
        return False
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        return False
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return False
    try:
        path.chmod(mode & ~0o077)
    except OSError as exc:
        log.warning("could not tighten %s (mode %03o): %s", path, mode, exc)
        return False
    log.warning("tightened %s from %03o to %03o: others could read it", path, mode, mode & ~0o077)
    return True
