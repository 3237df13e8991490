"""The tiny chat model for tests: built once per checkout, shared by parallel test processes.

``ensure_tiny_model()`` returns ``$TESSERA_TINY_MODEL_DIR`` when that holds a finished model,
else ``.cache/models/tessera-tiny`` under the repository root, training it there first if it
is missing. An ``fcntl`` lock keeps two processes from training at the same time; the one
that waited finds the finished model and reuses it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".cache" / "models" / "tessera-tiny"
ENV_VAR = "TESSERA_TINY_MODEL_DIR"
COMPLETE_STAMP = ".complete"  # tessera.models.make_tiny.COMPLETE_STAMP, without importing torch


def is_complete(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_STAMP).is_file()


def ensure_tiny_model() -> Path:
    """A directory holding the finished tiny model (trains it on first use, a few minutes)."""
    configured = os.environ.get(ENV_VAR)
    if configured and is_complete(Path(configured)):
        return Path(configured)
    if is_complete(DEFAULT_DIR):
        return DEFAULT_DIR
    DEFAULT_DIR.parent.mkdir(parents=True, exist_ok=True)
    lock_path = DEFAULT_DIR.parent / f"{DEFAULT_DIR.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_complete(DEFAULT_DIR):
                from tessera.models.make_tiny import make_tiny

                make_tiny(DEFAULT_DIR, show_progress=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return DEFAULT_DIR
